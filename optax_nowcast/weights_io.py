"""Predictor weight files: the one place they are read and written.

Two formats:

* **ours**: ``<name>.msgpack`` (Flax serialization of the predictor's params) next to ``<name>.json``
  (``{"predictor": name, "config": {...}, ...training record}``), written by :func:`write` (``python -m
  optax_nowcast.metatrain train --out DIR``) and shipped in ``optax_nowcast/pretrained``;
* **official** PyTorch checkpoints of the NiNo repository (``.pt``, read with torch, or converted to
  ``.npz``), read as a flat state dict by :func:`read_state_dict`.

Where the official checkpoints live is the user's choice: pass the path, or set
``$OPTAX_NOWCAST_OFFICIAL_DIR`` to their folder (:func:`official_checkpoint`).

>>> import tempfile, jax.numpy as jnp
>>> out = tempfile.mkdtemp()
>>> path = write(out, "toy", {"w": jnp.arange(3.0)}, {"config": {"n": 3}})
>>> params, config = read(path, lambda cfg: {"w": jnp.zeros(cfg["n"])}, expect="toy")
>>> params["w"].tolist(), config
([0.0, 1.0, 2.0], {'n': 3})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
OFFICIAL_ENV = "OPTAX_NOWCAST_OFFICIAL_DIR"


def shipped() -> list[str]:
  """Names of the predictors whose weights ship with the package."""
  return sorted(f[: -len(".msgpack")] for f in os.listdir(SHIPPED_DIR) if f.endswith(".msgpack"))


def shipped_path(name: str) -> str:
  """The ``.msgpack`` file of the shipped predictor ``name``."""
  p = os.path.join(SHIPPED_DIR, f"{name}.msgpack")
  if not os.path.exists(p):
    raise FileNotFoundError(f"no shipped weights named {name!r} in {SHIPPED_DIR} (have {shipped()}); "
                            "train your own (python -m optax_nowcast.metatrain train) and pass the file.")
  return p


def official_checkpoint(name: str = "nino_no_posw") -> str | None:
  """``$OPTAX_NOWCAST_OFFICIAL_DIR/<name>.npz`` (or ``.pt``) if that variable is set and the file exists.

  The official NiNo checkpoints (MIT) are not shipped: download them from the NiNo repository, convert
  them to ``.npz`` if you have no torch, put them in one folder and point the variable at it.
  """
  folder = os.environ.get(OFFICIAL_ENV)
  if not folder:
    return None
  for ext in (".npz", ".pt"):
    p = os.path.join(folder, name + ext)
    if os.path.exists(p):
      return p
  return None


def read_meta(weights_path: str | os.PathLike) -> dict[str, Any]:
  """The ``.json`` record written next to a ``.msgpack`` weights file."""
  json_path = os.path.splitext(os.fspath(weights_path))[0] + ".json"
  if not os.path.exists(json_path):
    raise FileNotFoundError(f"{json_path} (the config written next to {weights_path} by "
                            "weights_io.write) is missing.")
  with open(json_path) as f:
    return json.load(f)


def predictor_name(weights_path: str | os.PathLike) -> str:
  """The predictor a ``.msgpack`` file holds (from its ``.json``; the file name if the record has none)."""
  meta = read_meta(weights_path)
  return meta.get("predictor", os.path.splitext(os.path.basename(os.fspath(weights_path)))[0])


def read(weights_path: str | os.PathLike, template: Callable[[dict[str, Any]], Any],
         expect: str | None = None) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of a ``.msgpack`` file; ``template(config)`` gives the params' structure and
  ``expect`` checks the predictor's name."""
  import flax.serialization
  import jax
  import jax.numpy as jnp

  if not os.path.exists(weights_path):
    raise FileNotFoundError(f"no such weights file: {weights_path}")
  meta = read_meta(weights_path)
  name = predictor_name(weights_path)
  if expect is not None and name != expect:
    raise ValueError(f"{weights_path} holds {name!r} weights, not {expect!r}.")
  with open(weights_path, "rb") as f:
    data = f.read()
  want = meta.get("sha256")
  if want is not None and hashlib.sha256(data).hexdigest() != want:
    raise ValueError(f"{weights_path} is corrupted or truncated: its sha256 is "
                     f"{hashlib.sha256(data).hexdigest()}, the record next to it says {want}. Reinstall "
                     "the package (shipped weights) or write the file again (weights_io.write).")
  try:
    params = flax.serialization.from_bytes(template(meta["config"]), data)
  except Exception as e:  # msgpack's errors do not name the file
    raise ValueError(f"{weights_path} cannot be read as {name!r} weights ({type(e).__name__}: {e}); the "
                     "file is corrupted, truncated, or not written by weights_io.write.") from e
  return jax.tree.map(jnp.asarray, params), dict(meta["config"])


def write(out_dir: str, name: str, params: Any, record: Mapping[str, Any]) -> str:
  """Writes ``<name>.msgpack`` (Flax serialization of ``params``) and ``<name>.json`` (``record``, which
  holds at least ``config``, with ``"predictor": name``); returns the ``.msgpack`` path."""
  import flax.serialization

  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.msgpack")
  data = flax.serialization.to_bytes(params)
  with open(path, "wb") as f:
    f.write(data)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump({"predictor": name, **record, "sha256": hashlib.sha256(data).hexdigest()}, f, indent=1)
  return path


def read_state_dict(path: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A PyTorch state dict as numpy arrays, from a ``.pt`` file (torch, ``weights_only=True``), an ``.npz``
  conversion, or a mapping already in memory."""
  if isinstance(path, Mapping):
    return {k: np.asarray(v) for k, v in path.items()}
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  if str(path).endswith(".npz"):
    try:
      with np.load(path) as z:
        return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile's and numpy's errors do not name the file
      raise ValueError(f"{path} cannot be read as an .npz checkpoint ({type(e).__name__}: {e}); the file "
                       "is corrupted or truncated.") from e
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading {path} needs torch (pip install torch), or convert it to .npz.") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  obj = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def source_name(path: str | os.PathLike | Mapping[str, Any]) -> str:
  """How an error names a checkpoint: its path, or "the state dict given"."""
  return "the state dict given" if isinstance(path, Mapping) else os.fspath(path)


def tensor(sd: Mapping[str, np.ndarray], key: str, source: str,
           shape: tuple[int, ...] | None = None) -> np.ndarray:
  """``sd[key]``, checked: a missing key or (with ``shape``) a wrong shape is a ``ValueError`` that names
  the checkpoint, the key and both shapes, raised when the checkpoint is loaded rather than at the first
  jump."""
  if key not in sd:
    raise ValueError(f"{source}: the checkpoint has no tensor {key!r} (it has {len(sd)}, e.g. "
                     f"{', '.join(sorted(sd)[:3])}); is it a complete checkpoint of this predictor?")
  value = np.asarray(sd[key])
  if shape is not None and value.shape != tuple(shape):
    raise ValueError(f"{source}: tensor {key!r} has shape {value.shape}, expected {tuple(shape)} (from the "
                     f"checkpoint's other tensors); is it a complete checkpoint of this predictor?")
  return value


def resolve(weights: Any, model_params: Any, config: Mapping[str, Any] | None,
            official: Callable[[Any], tuple[Any, dict[str, Any]]], template: Callable[[dict[str, Any]], Any],
            config_help: str, default: str | None = None) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of a predictor from what its constructor was given: ``weights`` (an official
  checkpoint, read by ``official``, or a ``.msgpack`` file of ours, read with ``template``), our own
  ``model_params`` with ``config``, or, with neither, the shipped predictor ``default``."""
  if weights is not None and model_params is not None:
    raise ValueError("Give one of weights= (a checkpoint file) or model_params= (in memory), not both.")
  if weights is None and model_params is None:
    if default is None:
      raise ValueError("Give weights= (an official checkpoint or a .msgpack file from "
                       "optax_nowcast.metatrain) or model_params= with config=.")
    return read(shipped_path(default), template, expect=default)
  if weights is not None:
    if isinstance(weights, str | os.PathLike) and os.fspath(weights).endswith(".msgpack"):
      return read(weights, template, expect=default)
    return official(weights)
  if config is None:
    raise ValueError(f"model_params= needs config= ({config_help}).")
  return model_params, dict(config)


__all__ = ["OFFICIAL_ENV", "SHIPPED_DIR", "official_checkpoint", "predictor_name", "read", "read_meta",
           "read_state_dict", "resolve", "shipped", "shipped_path", "write"]
