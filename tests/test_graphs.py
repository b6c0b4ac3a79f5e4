"""Neural graphs against the official NiNo code's recorded graphs (../shared/reference/nino)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import torch_flat_to_flax  # noqa: E402

from optax_nowcast import graphs
from optax_nowcast.tasks import CNN, GPT, MLP


def _load(reference_dir, name):
  base = os.path.join(reference_dir, "graph_construction", name)
  with open(base + ".json") as f:
    return np.load(base + ".npz"), json.load(f)


CASES = {
    "mlp_10_8_6_3": lambda: MLP((8, 6), 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 10))),
    "fm16_cnn": lambda: CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
    "gpt2_tiny": lambda: GPT(11, 6, 2, 8, 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 6), jnp.int32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_graph_equals_the_official_graph(reference_dir, name):
  z, meta = _load(reference_dir, name)
  template = CASES[name]()
  g = graphs.neural_graph(template)
  assert (g.num_nodes, g.num_edges) == (int(z["num_nodes"]), len(z["senders"]))
  assert g.num_slots == meta["max_feat_size (slots)"]
  np.testing.assert_array_equal(g.senders, z["senders"])
  np.testing.assert_array_equal(g.receivers, z["receivers"])
  np.testing.assert_array_equal(g.edge_type, z["edge_type"])
  np.testing.assert_array_equal(g.edge_const, z["edge_const_value"])
  np.testing.assert_array_equal(g.pos_w, z["pos_w"])
  # (parameter, index, slot) -> edge: put each parameter's flat torch index into our tree, gather.
  n = meta["num_params"]
  params = torch_flat_to_flax(np.arange(n, dtype=np.float64), meta, template)
  leaves = [jnp.asarray(x, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)[None]
            for x in jax.tree.leaves(params)]
  feats = np.asarray(g.gather(leaves))  # (E, S*1): ctx = 1
  real = z["edge_global_index"] >= 0
  np.testing.assert_array_equal(feats[real], z["edge_global_index"][real])
  # Scatter inverts gather: every parameter comes back, exactly once.
  back = g.scatter(jnp.asarray(feats))
  for a, b in zip(back, jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_gpt_matches_the_recorded_gpt2_forward(reference_dir):
  """Our GPT with the reference GPT-2's weights gives its logits: the param mapping above is right."""
  z, meta = _load(reference_dir, "gpt2_tiny")
  model = GPT(11, 6, 2, 8, 2)
  params = torch_flat_to_flax(z["gpt2_params_flat"], meta, CASES["gpt2_tiny"]())
  logits = model.apply(params, jnp.asarray(z["gpt2_input_ids"]))
  np.testing.assert_allclose(logits, z["gpt2_logits"], atol=1e-4, rtol=1e-4)


def test_edge_features_match_the_reference_scaling_input(reference_dir):
  z, meta = _load(reference_dir, "fm16_cnn")
  template = CASES["fm16_cnn"]()
  g = graphs.neural_graph(template)
  scaled = z["example_scaled_states"].T  # (5, P)
  hist = [torch_flat_to_flax(s, meta, template) for s in scaled]
  leaves = [jnp.stack(xs) for xs in zip(*[jax.tree.leaves(h) for h in hist], strict=True)]
  feats = g.gather(leaves)
  np.testing.assert_array_equal(np.asarray(feats)[:-g.num_nodes], z["example_edge_attr"][:-g.num_nodes])
  np.testing.assert_array_equal(np.asarray(feats), z["example_edge_attr"])


def test_flatten_after_conv_wires_each_unit_to_its_channel():
  import flax.linen as nn

  class FlatCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), padding="SAME")(x)
      return nn.Dense(3)(x.reshape(x.shape[0], -1))  # NHWC flatten of a 2x2x4 map: 16 inputs

  params = FlatCNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))
  g = graphs.neural_graph(params)
  assert g.num_nodes == 1 + 1 + 4 + 1 + 3
  dense = [b for b in g.blocks if b[0].endswith("Dense_0/kernel")][0]
  snd = g.senders[dense[1]:dense[2]].reshape(16, 3)
  np.testing.assert_array_equal(snd[:, 0], 2 + np.arange(16) % 4)  # input unit i <- channel i % 4


def test_unrecognised_layers_name_the_path():
  with pytest.raises(ValueError, match=r"Dense_1: takes 5 inputs but the previous layer has 4"):
    graphs.neural_graph({"params": {"Dense_0": {"kernel": jnp.zeros((3, 4))},
                                    "Dense_1": {"kernel": jnp.zeros((5, 2))}}})
  with pytest.raises(ValueError, match=r"weird: not a Dense or Conv layer"):
    graphs.neural_graph({"params": {"weird": {"w": jnp.zeros((3, 4))}}})
  with pytest.raises(ValueError, match="5x5 kernel"):
    graphs.neural_graph({"params": {"Conv_0": {"kernel": jnp.zeros((5, 5, 1, 2))}}})


def test_lpe_and_centrality(reference_dir):
  z, meta = _load(reference_dir, "fm16_cnn")
  g = graphs.neural_graph(CASES["fm16_cnn"]())
  lpe = graphs.laplacian_pe(g)
  assert lpe.shape == (95, 8) and lpe.dtype == np.float32
  # Non-degenerate eigenvalues (columns 0-2 here): same eigenvectors as the reference up to sign.
  for c in range(3):
    assert min(np.abs(lpe[:, c] - z["lpe"][:, c]).max(), np.abs(lpe[:, c] + z["lpe"][:, c]).max()) < 1e-5
  big = graphs.neural_graph(CASES["gpt2_tiny"]())  # 179 nodes: the sparse solver
  lpe_big = graphs.laplacian_pe(big)
  zg, _ = _load(reference_dir, "gpt2_tiny")
  eig = _load(reference_dir, "gpt2_tiny")[1]["laplacian_eigvals_9"]
  # Each column is an eigenvector of L with the recorded eigenvalue.
  n = big.num_nodes
  a = np.zeros((n, n))
  m = big.senders != big.receivers
  a[big.senders[m], big.receivers[m]] = a[big.receivers[m], big.senders[m]] = 1
  d = a.sum(1) ** -0.5
  lap = np.eye(n) - d[:, None] * a * d[None]
  for c in range(8):
    v = lpe_big[:, c].astype(np.float64)
    np.testing.assert_allclose(lap @ v, eig[c + 1] * v, atol=1e-5)
  ec = graphs.eigenvector_centrality(g)
  assert ec.shape == (95,) and ec.max() == 1.0 and ec.min() > 0


def test_nnx_state_gives_the_same_graph_as_linen(reference_dir):
  from flax import nnx

  class NNXMLP(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(10, 8, rngs=rngs), nnx.Linear(8, 6, rngs=rngs),
                              nnx.Linear(6, 3, rngs=rngs)])

  state = nnx.state(NNXMLP(nnx.Rngs(0)), nnx.Param)
  g = graphs.neural_graph(state)
  z, _ = _load(reference_dir, "mlp_10_8_6_3")
  np.testing.assert_array_equal(g.senders, z["senders"])
  np.testing.assert_array_equal(g.receivers, z["receivers"])
  np.testing.assert_array_equal(g.edge_type, z["edge_type"])
  leaves = jax.tree.leaves(state)
  feats = np.asarray(g.gather([x[None] for x in leaves]))
  k0 = np.asarray(state["layers"][0]["kernel"][...])
  np.testing.assert_array_equal(feats[:80, 0], k0.reshape(-1))  # edge (i, o) of layer 0 = kernel[i, o]
  b2 = np.asarray(state["layers"][2]["bias"][...])
  np.testing.assert_array_equal(feats[160:163, 0], b2)


def test_sorted_keys_and_explicit_order(reference_dir):
  """JAX re-sorts dict keys (tree.map): the graph must not depend on dict order."""
  z, _ = _load(reference_dir, "gpt2_tiny")
  shuffled = jax.tree.map(lambda x: x, CASES["gpt2_tiny"]())  # keys now h_0, h_1, ln_f, wpe, wte
  g = graphs.neural_graph(shuffled)
  np.testing.assert_array_equal(g.senders, z["senders"])
  np.testing.assert_array_equal(g.edge_type, z["edge_type"])
  deep = MLP((4,) * 11, 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))  # Dense_0 .. Dense_11
  g = graphs.neural_graph(jax.tree.map(lambda x: x, deep))
  assert g.num_nodes == 5 + 11 * (1 + 4) + 1 + 3
  named = {"params": {"out": {"kernel": jnp.zeros((4, 2))}, "hidden": {"kernel": jnp.zeros((3, 4))}}}
  with pytest.raises(ValueError, match="pass order="):
    graphs.neural_graph({"params": {"b_out": {"kernel": jnp.zeros((4, 2))},
                                    "a_in": {"kernel": jnp.zeros((3, 5))}}})
  g = graphs.neural_graph(named, order=["hidden", "out"])
  assert g.num_nodes == 3 + 4 + 2
  with pytest.raises(ValueError, match="must list exactly the modules"):
    graphs.neural_graph(named, order=["hidden"])
