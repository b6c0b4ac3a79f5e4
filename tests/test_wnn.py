"""WNN+ against the official nino_mlp checkpoints; the WNN architecture and normalisation."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import torch_flat_to_flax

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
  z = np.load(os.path.join(reference_dir, "gnn_forward", f"{graph}_wnn.npz"))
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
