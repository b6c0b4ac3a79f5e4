"""WNN+ against the official nino_mlp checkpoints; the WNN architecture and normalisation."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import need, torch_flat_to_flax

from optax_nowcast.predictors.wnn import (
    WNN,
    WNNPlus,
    load_official_wnn_plus,
    wnn,
    wnn_denormalise,
    wnn_kind,
    wnn_normalise,
    wnn_plus,
)


@pytest.mark.parametrize("which,prefix", [("nino_mlp", "h128"), ("nino_mlp_h32", "h32")])
@pytest.mark.parametrize("graph", ["random12", "random30", "fm16"])
def test_wnn_plus_matches_the_official_model(reference_dir, which, prefix, graph):
  params, cfg = load_official_wnn_plus(os.path.join(reference_dir, "weights", f"{which}.npz"))
  assert cfg["hidden"] == (128 if prefix == "h128" else 32) and cfg["horizons"] == 40 and cfg["ctx"] == 5
  model = WNNPlus(**{k: v for k, v in cfg.items() if k != "ctx"})
  z = np.load(need(os.path.join(reference_dir, "gnn_forward", f"{graph}_wnn.npz"), "WNN+ reference vectors"))
  x = jnp.asarray(z["edge_attr"].reshape(-1, 9, 5))
  types = jnp.broadcast_to(jnp.asarray(z["edge_type"])[:, None], x.shape[:2])
  with jax.default_matmul_precision("highest"):
    rec = model.apply(params, x, types, method=WNNPlus.intermediates)
    for k in (1, 5, 40):
      pred = x[..., -1] + model.apply(params, x, types, k)
      np.testing.assert_allclose(pred, z[f"{prefix}_pred_k{k}"], atol=1e-5, rtol=1e-5)
  for name in ("z0", "hidden_1", "hidden_2", "hidden_3", "dms_raw"):
    if f"{prefix}_{name}" in z.files:
      ref = z[f"{prefix}_{name}"]
      np.testing.assert_allclose(rec[name], ref, atol=1e-5 * np.abs(ref).max() + 1e-5)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_wnn_plus_end_to_end_on_fm16(reference_dir, fm16_end_to_end, k):
  z, meta, template, history = fm16_end_to_end
  pred = wnn_plus(os.path.join(reference_dir, "weights", "nino_mlp.npz"))
  pred.init(template)
  with jax.default_matmul_precision("highest"):
    out, _ = jax.jit(pred.predict)(history, jnp.arange(-4.0, 1.0), jnp.int32(k), ())
  want = torch_flat_to_flax(z[f"nino_mlp_pred_k{k}"], meta, template)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_wnn_architecture_and_normalisation():
  model = WNN()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 9425  # the published size
  w = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)), jnp.float32)
  x, d, scale = wnn_normalise(w)
  assert x.shape == (7, 5) and d.shape == (7, 4) and bool(jnp.all(x[:, 0] == 0))
  assert float(jnp.abs(x).max()) <= 0.5  # |L| <= max - min, divided by twice that
  np.testing.assert_allclose(x * scale[:, None] + w[:, :1], w, atol=1e-6)  # round trip
  y = jnp.full((7,), 0.25)
  np.testing.assert_allclose(wnn_denormalise(w[:, -1], y, scale), w[:, -1] + 0.25 * scale, rtol=1e-6)
  assert [wnn_kind(s) for s in [(3, 3, 1, 16), (32, 10), (10,), ()]] == ["conv", "dense", "bias", "bias"]
  pred = wnn({"conv": params, "dense": params, "bias": params})
  hist = {"k": jnp.stack([jnp.full((3, 2), float(i)) for i in range(5)])}
  out, _ = jax.jit(pred.predict)(hist, jnp.arange(-4.0, 1.0), 5, ())
  assert out["k"].shape == (3, 2) and bool(jnp.all(jnp.abs(out["k"] - 4.0) <= 2 * (4 + 2e-5)))
  with pytest.raises(ValueError, match="kinds"):
    wnn({"conv": params})


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 7, 64, 10_000])
def test_chunked_prediction_matches_the_model_leaf_by_leaf(chunk):
  """Rows of every leaf batched and cut into chunks (padding included) give each leaf's own prediction."""
  from optax_nowcast.tasks import CNN
  params = CNN((4, 8, 8)).init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))
  rng = np.random.default_rng(1)
  history = jax.tree.map(lambda p: jnp.asarray(p + 0.01 * np.cumsum(rng.normal(size=(5, *p.shape)), 0),
                                               jnp.float32), params)
  kinds = {kind: WNN().init(jax.random.PRNGKey(seed), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
           for seed, kind in enumerate(("conv", "dense", "bias"), start=1)}
  out, _ = jax.jit(wnn(kinds, chunk=chunk).predict)(history, jnp.arange(-4.0, 1.0), 5, ())
  for h, o in zip(jax.tree.leaves(history), jax.tree.leaves(out), strict=True):
    w = h.reshape(5, -1).T
    x, d, scale = wnn_normalise(w)
    want = wnn_denormalise(w[:, -1], WNN().apply(kinds[wnn_kind(h.shape[1:])], x, d), scale)
    np.testing.assert_allclose(o.reshape(-1), want, atol=1e-6)

  model = WNNPlus(hidden=16, horizons=8)
  mp = model.init(jax.random.PRNGKey(4), jnp.zeros((1, 5)), jnp.zeros((1,), jnp.int32))
  pred = wnn_plus(model_params=mp, config={"hidden": 16, "horizons": 8, "ctx": 5}, chunk=chunk)
  pred.init(params)
  bf16 = jax.tree.map(lambda h: h.astype(jnp.bfloat16), history)
  outs = [jax.jit(pred.predict)(h, jnp.arange(-4.0, 1.0), jnp.int32(3), ())[0] for h in (history, bf16)]
  wide = wnn_plus(model_params=mp, config={"hidden": 16, "horizons": 8, "ctx": 5}, chunk=None)
  wide.init(params)
  want, _ = jax.jit(wide.predict)(history, jnp.arange(-4.0, 1.0), jnp.int32(3), ())
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert {x.dtype for x in jax.tree.leaves(outs[1])} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True, "fast"])
def test_bad_chunk_is_refused_at_construction(chunk):
  with pytest.raises(ValueError, match="chunk must be"):
    wnn_plus(chunk=chunk)
  with pytest.raises(ValueError, match="chunk must be"):
    wnn(chunk=chunk)
