"""Shared helpers for the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_nowcast.predictors import Predictor, no_state


def run_steps(tx, params, grad_fn, n_steps, jit=True):
  """Runs ``n_steps`` updates; returns the list of params (index s = after s updates) and the state."""
  state = tx.init(params)

  def step(params, state):
    updates, state = tx.update(grad_fn(params), state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step)
  trajectory = [params]
  for _ in range(n_steps):
    params, state = step(params, state)
    trajectory.append(params)
  return trajectory, state


def marker_predictor(fn) -> Predictor:
  """A predictor ``fn(history_leaf, times, k) -> leaf`` applied to every leaf (for probing)."""

  def predict(history, times, k, state):
    return jax.tree.map(lambda h: fn(h, times, k).astype(h.dtype), history), state

  return Predictor(init=no_state, predict=predict, name="marker")


@pytest.fixture
def constant_grad():
  """Gradient -1 everywhere: SGD(lr) moves every float coordinate by +lr per step."""
  return lambda params: jax.tree.map(lambda p: -jnp.ones_like(p), params)


def numpy_linefit(states: list[np.ndarray], k: float, weighted: bool = False) -> np.ndarray:
  """Independent reference: np.polyfit through x = 1..ctx, evaluated at ctx + k."""
  ctx = len(states)
  x = np.arange(1, ctx + 1, dtype=np.float64)
  y = np.stack([np.asarray(s, np.float64).reshape(-1) for s in states])
  w = np.sqrt(x / ctx) if weighted else None  # polyfit weights multiply residuals
  coef = np.polyfit(x, y, 1, w=w)
  return (coef[0] * (ctx + k) + coef[1]).reshape(np.shape(states[0]))


SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared"


def need(path, what: str):
  """Returns ``path`` if it exists; otherwise skips (locally) or fails (under CI, where it must exist)."""
  import os

  if os.path.exists(path):
    return path
  msg = f"{what} not found at {path}"
  if os.environ.get("CI"):
    pytest.fail(msg + " (CI must provide it: see .ci/run)")
  pytest.skip(msg)


@pytest.fixture(scope="session")
def data_dir():
  """The workplace's shared data folder (CIFAR-10, Tiny Shakespeare); Fashion-MNIST comes from apt."""
  return str(need(SHARED / "data", "the shared data folder"))


@pytest.fixture(scope="session")
def reference_dir():
  """The official NiNo reference vectors (read in place, never copied into the project)."""
  return need(SHARED / "reference" / "nino", "the NiNo reference vectors")
