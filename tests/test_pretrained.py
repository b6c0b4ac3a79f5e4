"""The shipped weights: they load, the model card describes them, the default predictors use them and they
extrapolate a steady trend forward."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast import pretrained
from optax_nowcast.tasks import CNN

NAMES = ("wnn_plus", "wnn", "lfd2", "nino")
MAX_BYTES = {"nino": 4_000_000}  # the graph network; the per-element models stay under 1 MB


def test_every_shipped_model_loads_and_is_on_the_model_card():
  assert set(NAMES) <= set(pretrained.available())
  with open(os.path.join(pretrained.PRETRAINED_DIR, "MODEL_CARD.md")) as f:
    card = f.read()
  assert "python -m optax_nowcast.metatrain pretrained" in card
  for name in NAMES:
    params, config = pretrained.load(name)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert os.path.getsize(pretrained.path(name)) < MAX_BYTES.get(name, 1_000_000)  # small committed files
    meta = pretrained.read_meta(pretrained.path(name))
    assert meta["predictor"] == name and meta["config"] == config
    assert meta["val_loss"] < meta["initial_val_loss"], (name, meta["initial_val_loss"], meta["val_loss"])
    assert meta["val_runs"] >= 1 and meta["train_runs"] >= 4
    assert f"`{name}`" in card and f"{meta['val_loss']:.4g}" in card
    tasks = {d["task"] for d in meta["data"]}
    row = next(line for line in card.splitlines() if line.startswith(f"| `{name}` |"))
    assert all(t in row for t in tasks), (name, row)  # the card says what each model was trained on
    assert tasks and not tasks & {"FM-32", "C10-32", "LM-3-64"}  # held-out tasks stay out of training
  with pytest.raises(FileNotFoundError, match="no shipped weights named 'nope'"):
    pretrained.path("nope")


def _trend_history(ctx=5):
  """A CNN's params moving along a fixed random direction with a little noise: w_t = w_0 + t * v + e_t."""
  template = CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  leaves, treedef = jax.tree.flatten(template)
  rng = np.random.default_rng(0)
  hist = []
  for x in leaves:
    w0 = rng.normal(size=x.shape).astype(np.float32) * 0.1
    v = rng.normal(size=x.shape).astype(np.float32) * 0.01
    noisy = [w0 + t * v + 1e-4 * rng.normal(size=x.shape) for t in range(ctx)]
    hist.append(np.stack(noisy).astype(np.float32))
  return template, jax.tree.unflatten(treedef, [jnp.asarray(h) for h in hist])


@pytest.mark.parametrize("name", ["wnn_plus", "wnn", "nino"])
def test_default_predictors_carry_a_steady_trend_forward(name):
  template, history = _trend_history()
  pred_fn = {"wnn_plus": onc.predictors.wnn_plus, "wnn": onc.predictors.wnn,
             "nino": onc.predictors.nino}[name]()
  state = pred_fn.init(template)
  times = jnp.arange(-4, 1, dtype=jnp.float32)
  pred, _ = jax.jit(pred_fn.predict)(history, times, jnp.int32(5), state)
  agree = []
  for h, p in zip(jax.tree.leaves(history), jax.tree.leaves(pred), strict=True):
    assert p.shape == h.shape[1:] and p.dtype == h.dtype
    step = np.asarray(h[-1] - h[-2])
    agree.append(np.sign(np.asarray(p - h[-1])) == np.sign(step))
  frac = np.concatenate([a.ravel() for a in agree]).mean()
  # The jump goes the way the parameters were moving. NiNo's graph messages mix in each neuron's neighbours'
  # moves, so fewer single coordinates follow their own trend (0.86 measured) than per-element models (> 0.9).
  assert frac > (0.8 if name == "nino" else 0.9), frac


def test_default_lfd2_farcasts_forward():
  params, config = pretrained.load("lfd2")
  predictor = onc.predictors.lfd2()
  w0, wn = jnp.zeros(100), jnp.linspace(0.01, 1.0, 100)
  pred, _ = predictor.predict({"w": jnp.stack([w0, wn])}, jnp.asarray([-5.0, 0.0]), jnp.int32(10), ())
  moved = np.asarray(pred["w"] - wn)
  assert (moved > 0).mean() > 0.9  # beyond w_n, in the direction w_0 -> w_n
  assert config["n"] == 5 and params["A"].shape == (2, config["m"])
  tx = optax.chain(optax.adam(1e-2), onc.farcast(predictor, n=config["n"], unit=2, horizon=3))
  tx.init({"w": jnp.zeros(3)})


def test_a_missing_checkpoint_is_named_before_anything_else(tmp_path):
  import optax_nowcast as onc

  for path in (tmp_path / "nope.pt", tmp_path / "nope.npz", tmp_path / "nope.msgpack"):
    with pytest.raises(FileNotFoundError, match="nope"):
      onc.predictors.nino(str(path))
