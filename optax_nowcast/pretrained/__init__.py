"""Predictor weights trained by this project and shipped with the package, and their loader.

Each predictor ``<name>`` is two files here: ``<name>.msgpack`` (Flax serialization of its params) and
``<name>.json`` (the predictor's name, its config and the training record: runs, steps, validation loss).
``MODEL_CARD.md`` says what each was trained on and the command that regenerates it. The same loader reads
weights a user trains with ``python -m optax_nowcast.metatrain train --out DIR``.

>>> from optax_nowcast import pretrained
>>> sorted(pretrained.available())
['lfd2', 'nino', 'wnn', 'wnn_plus']
>>> params, config = pretrained.load("lfd2")
>>> params["A"].shape == (2, config["m"])
True
"""

from __future__ import annotations

import json
import os
from typing import Any

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))


def available() -> list[str]:
  """Names of the shipped predictors."""
  return sorted(f[: -len(".msgpack")] for f in os.listdir(PRETRAINED_DIR) if f.endswith(".msgpack"))


def path(name: str) -> str:
  """The ``.msgpack`` file of the shipped predictor ``name``."""
  p = os.path.join(PRETRAINED_DIR, f"{name}.msgpack")
  if not os.path.exists(p):
    raise FileNotFoundError(f"no shipped weights named {name!r} in {PRETRAINED_DIR} (have {available()}); "
                            "train your own (python -m optax_nowcast.metatrain train) and pass the file.")
  return p


def _template(name: str, cfg: dict[str, Any]) -> Any:
  import jax
  import jax.numpy as jnp

  from optax_nowcast.predictors import lfd as lfd_lib
  from optax_nowcast.predictors.wnn import WNN, WNNPlus

  if name == "wnn_plus":
    return WNNPlus(**{k: v for k, v in cfg.items() if k != "ctx"}).init(
        jax.random.PRNGKey(0), jnp.zeros((1, cfg["ctx"])), jnp.zeros((1,), jnp.int32))
  if name == "wnn":
    one = WNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
    return {k: one for k in ("conv", "dense", "bias")}
  if name == "nino":
    from optax_nowcast import graphs
    from optax_nowcast.predictors.nino import NiNoGNN, make_graphs_tuple
    model = NiNoGNN(**{k: v for k, v in cfg.items() if k not in ("lpe", "node_features")})
    tiny = {"params": {"Dense_0": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}}
    g = graphs.neural_graph(tiny)
    x = jnp.zeros((g.num_edges, model.slots * model.ctx))
    return model.init(jax.random.PRNGKey(0), make_graphs_tuple(g, x, jnp.zeros((g.num_nodes, cfg["lpe"]))))
  if name in ("lfd2", "lfn", "lfl", "lfs"):
    return lfd_lib.init_lfd(lfd_lib.lfd_spec(cfg["kind"], cfg["n"], cfg["m"]))
  raise ValueError(f"unknown predictor {name!r} in the weights' .json (wnn_plus, wnn, nino, lfd2, lfn, lfl, "
                   "lfs).")


def read_meta(weights_path: str | os.PathLike) -> dict[str, Any]:
  """The ``.json`` record written next to a ``.msgpack`` weights file."""
  json_path = os.path.splitext(os.fspath(weights_path))[0] + ".json"
  if not os.path.exists(json_path):
    raise FileNotFoundError(f"{json_path} (the config written next to {weights_path} by "
                            "metatrain.save_predictor) is missing.")
  with open(json_path) as f:
    return json.load(f)


def load_file(weights_path: str | os.PathLike, expect: str | None = None) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of a ``.msgpack`` weights file and its ``.json``; ``expect`` checks the name."""
  import flax.serialization
  import jax
  import jax.numpy as jnp

  meta = read_meta(weights_path)
  name = meta.get("predictor", os.path.splitext(os.path.basename(os.fspath(weights_path)))[0])
  if expect is not None and name != expect:
    raise ValueError(f"{weights_path} holds {name!r} weights, not {expect!r}.")
  with open(weights_path, "rb") as f:
    params = flax.serialization.from_bytes(_template(name, meta["config"]), f.read())
  return jax.tree.map(jnp.asarray, params), dict(meta["config"])


def load(name: str) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of the shipped predictor ``name`` (``wnn_plus``, ``wnn``, ``lfd2``)."""
  return load_file(path(name), expect=name)


__all__ = ["PRETRAINED_DIR", "available", "load", "load_file", "path", "read_meta"]
