"""Shared helpers for the tests (and the environment of the notebook runs)."""

from __future__ import annotations

import os
import pathlib

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


SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"

# The notebooks (collected from notebooks/ in the same run, executed by nbmake in kernels that inherit
# this environment) run small; they include NiNo when the official checkpoint is at hand.
os.environ.setdefault("OPTAX_NOWCAST_SMALL", "1")
if (SHARED / "reference" / "nino" / "weights" / "nino_no_posw.npz").exists():
  os.environ.setdefault("OPTAX_NOWCAST_NINO_WEIGHTS",
                        str(SHARED / "reference" / "nino" / "weights" / "nino_no_posw.npz"))


def need(path, what: str):
  """Returns ``path`` if it exists; otherwise skips (locally) or fails (under CI, where it must exist)."""
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


def torch_flat_to_flax(flat, meta, template):
  """The reference's flat torch vector as our params tree (README 2.1; GPT-2's fused c_attn split)."""
  out = jax.tree.map(lambda x: None, template)
  tree = dict(out["params"]) if "params" in out else dict(out)

  def put(path, value):
    node = tree
    keys = path.split("/")
    for k in keys[:-1]:
      node[k] = dict(node[k])
      node = node[k]
    node[keys[-1]] = jnp.asarray(value)

  for p in meta["torch_params"]:
    t = np.asarray(flat[p["offset"]: p["offset"] + p["numel"]]).reshape(p["shape"])
    name = p["name"]
    if name.startswith("transformer."):  # GPT-2 (HF) -> optax_nowcast.tasks.GPT
      parts = name.split(".")[1:]
      if parts[0] in ("wte", "wpe"):
        put(f"{parts[0]}/embedding", t)
      elif parts[0] == "ln_f":
        put(f"ln_f/{'scale' if parts[1] == 'weight' else 'bias'}", t)
      else:
        blk, mod = f"h_{parts[1]}", parts[2]
        if mod in ("ln_1", "ln_2"):
          put(f"{blk}/{mod}/{'scale' if parts[3] == 'weight' else 'bias'}", t)
        elif mod == "attn" and parts[3] == "c_attn":
          d = t.shape[-1] // 3
          tmpl = template["params"][blk]["attn"]["query"]["kernel"].shape  # (d, H, dh)
          for j, qkv in enumerate(("query", "key", "value")):
            if parts[4] == "weight":
              put(f"{blk}/attn/{qkv}/kernel", t[:, j * d:(j + 1) * d].reshape(tmpl))
            else:
              put(f"{blk}/attn/{qkv}/bias", t[j * d:(j + 1) * d].reshape(tmpl[1:]))
        elif mod == "attn":  # c_proj
          tmpl = template["params"][blk]["attn"]["out"]["kernel"].shape
          put(f"{blk}/attn/out/{'kernel' if parts[4] == 'weight' else 'bias'}",
              t.reshape(tmpl) if parts[4] == "weight" else t)
        else:  # mlp.c_fc / mlp.c_proj (Conv1D: (in, out), no transpose)
          kind = "kernel" if parts[4] == "weight" else "bias"
          put(f"{blk}/{'fc' if parts[3] == 'c_fc' else 'proj'}/{kind}", t)
      continue
    if t.ndim == 4:
      t = t.transpose(2, 3, 1, 0)
    elif t.ndim == 2:
      t = t.T
    put(p["flax_path"], t)
  return {"params": tree}


@pytest.fixture(scope="session")
def fm16_end_to_end(reference_dir):
  """The reference's 5 real FM/16 states as our params: (npz, graph json, template, stacked history)."""
  import json

  from optax_nowcast.tasks import CNN

  z = np.load(reference_dir / "end_to_end" / "fm16_end_to_end.npz")
  with open(reference_dir / "graph_construction" / "fm16_cnn.json") as f:
    meta = json.load(f)
  template = CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  states = [torch_flat_to_flax(s, meta, template) for s in z["states"]]
  return z, meta, template, jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """The notebooks are slow end-to-end runs: the default command leaves them to ``-m slow`` (CI runs both)."""
  for item in items:
    if item.path.suffix == ".ipynb":
      item.add_marker(pytest.mark.slow)
