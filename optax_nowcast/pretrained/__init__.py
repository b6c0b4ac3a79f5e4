"""Predictor weights trained by this project and shipped with the package, and their loader.

Each predictor ``<name>`` is two files here: ``<name>.msgpack`` (Flax serialization of its params) and
``<name>.json`` (the predictor's name, its config and the training record: runs, steps, validation loss).
``MODEL_CARD.md`` says what each was trained on and the command that regenerates it. The same loader reads
weights a user trains with ``python -m optax_nowcast.metatrain train --out DIR``. Files are read and
written by :mod:`optax_nowcast.weights_io`; this module knows which params structure each predictor has.

>>> from optax_nowcast import pretrained
>>> sorted(pretrained.available())
['lfd2', 'nino', 'wnn', 'wnn_plus']
>>> params, config = pretrained.load("lfd2")
>>> params["A"].shape == (2, config["m"])
True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from optax_nowcast import weights_io
from optax_nowcast.predictors.lfd import lfd_template
from optax_nowcast.predictors.nino import nino_template
from optax_nowcast.predictors.wnn import wnn_plus_template, wnn_template

PRETRAINED_DIR = weights_io.SHIPPED_DIR

# predictor name (as in the weights' .json) -> the structure of its params for a config
TEMPLATES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "wnn_plus": wnn_plus_template, "wnn": wnn_template, "nino": nino_template,
    **{kind: lfd_template for kind in ("lfd2", "lfn", "lfl", "lfs")},
}

available = weights_io.shipped
path = weights_io.shipped_path
read_meta = weights_io.read_meta


def load_file(weights_path: str | os.PathLike, expect: str | None = None) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of a ``.msgpack`` weights file and its ``.json``; ``expect`` checks the name."""
  name = weights_io.predictor_name(weights_path)
  if name not in TEMPLATES:
    raise ValueError(f"unknown predictor {name!r} in the weights' .json next to {weights_path} (one of "
                     f"{sorted(TEMPLATES)}).")
  return weights_io.read(weights_path, TEMPLATES[name], expect=expect)


def load(name: str) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` of the shipped predictor ``name`` (``wnn_plus``, ``wnn``, ``nino``, ``lfd2``)."""
  return load_file(path(name), expect=name)


__all__ = ["PRETRAINED_DIR", "TEMPLATES", "available", "load", "load_file", "path", "read_meta"]
