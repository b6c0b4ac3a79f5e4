"""sklearn's digits (1,797 8x8 images, embedded in scikit-learn) and a Flax MLP: the default demo task."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from optax_nowcast.tasks.models import MLP  # noqa: F401 - re-exported: the demo's model


class DigitsData(NamedTuple):
  """Train/validation split of sklearn digits; images flattened to 64 features scaled to [0, 1]."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray


def load_digits_split(val_fraction: float = 0.2, seed: int = 0) -> DigitsData:
  """Loads sklearn digits and splits it with a fixed, stratified permutation.

  >>> d = load_digits_split()
  >>> d.x_train.shape, d.x_val.shape
  ((1438, 64), (359, 64))
  """
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("The digits task needs scikit-learn: pip install 'optax_nowcast[tasks]'.") from e
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
  x, y = load_digits(return_X_y=True)
  if x.shape != (1797, 64) or y.shape != (1797,):
    raise ValueError(f"sklearn digits has an unexpected shape {x.shape}, {y.shape}; expected (1797, 64).")
  rng = np.random.default_rng(seed)
  val_idx = []
  for c in range(10):  # stratified: the same fraction of every class
    idx = np.flatnonzero(y == c)
    val_idx.extend(rng.permutation(idx)[: int(round(val_fraction * len(idx)))])
  val = np.zeros(len(y), bool)
  val[np.asarray(val_idx)] = True
  x = (x / 16.0).astype(np.float32)
  y = y.astype(np.int32)
  return DigitsData(x[~val], y[~val], x[val], y[val])
