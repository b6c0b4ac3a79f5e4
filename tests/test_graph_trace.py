"""Neural graphs read from the forward pass (graph_trace) and nino() on the models people bring."""

from __future__ import annotations

import collections
import json
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_nowcast as onc
from optax_nowcast import graph_trace, graphs
from optax_nowcast.tasks import CNN, GPT, MLP, NNXTutorialCNN, ResNet, ScanTransformer, ViT


def _types(g):
  return dict(collections.Counter(g.edge_type.tolist()))


def _same_graph(a, b):
  assert (a.num_nodes, a.num_edges, a.num_slots) == (b.num_nodes, b.num_edges, b.num_slots)
  for f in ("senders", "receivers", "edge_type", "edge_const", "pos_w"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# ------------------------------------------------------------------------------- the official graphs

OFFICIAL = {
    "mlp_10_8_6_3": (lambda: MLP((8, 6), 3), jnp.zeros((1, 10))),
    "fm16_cnn": (lambda: CNN((16, 32, 32)), jnp.zeros((1, 28, 28, 1))),
    "gpt2_tiny": (lambda: GPT(11, 6, 2, 8, 2), jnp.zeros((1, 6), jnp.int32)),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_traced_graph_is_the_official_graph(reference_dir, name):
  """MLP and CNN: edge for edge the official code's graph. GPT-2: the same nodes, and edges of every type
  in the same numbers (the official code wires the key bias to stream neurons and orders blocks by module;
  the trace wires it to the query neurons the key neurons become)."""
  make, x = OFFICIAL[name]
  model = make()
  params = model.init(jax.random.PRNGKey(0), x)
  g = graph_trace.trace_graph(model.apply, params, x)
  base = os.path.join(reference_dir, "graph_construction", name)
  z = np.load(base + ".npz")
  with open(base + ".json") as f:
    meta = json.load(f)
  assert (g.num_nodes, g.num_edges) == (int(z["num_nodes"]), len(z["senders"]))
  assert g.num_slots == meta["max_feat_size (slots)"]
  if name == "gpt2_tiny":
    assert _types(g) == dict(collections.Counter(np.asarray(z["edge_type"]).tolist()))
    np.testing.assert_array_equal(np.sort(g.pos_w), np.sort(graphs.neural_graph(params).pos_w))
  else:
    _same_graph(g, graphs.neural_graph(params))
    np.testing.assert_array_equal(g.senders, z["senders"])
    np.testing.assert_array_equal(g.receivers, z["receivers"])
    for p, q in zip(g.positions, graphs.neural_graph(params).positions, strict=True):
      np.testing.assert_array_equal(p, q)


# ------------------------------------------------------------------------------------ the models

class InlineLNMLP(nn.Module):
  """An MLP with LayerNorm whose layers are created inline, out of data-flow order (``Dense_0`` is the
  output layer)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.LayerNorm()(nn.Dense(24)(x))))


class NNXLNMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(12, 24, rngs=rngs)
    self.ln = nnx.LayerNorm(24, rngs=rngs)
    self.l2 = nnx.Linear(24, 10, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.ln(self.l1(x))))


def _models():
  """name -> (apply_fn, params, example input, expected edge-type counts that must be present)."""
  out = {}
  m = NNXTutorialCNN(rngs=nnx.Rngs(0))
  out["nnx_tutorial_cnn"] = (graph_trace.nnx_apply(m), nnx.state(m, nnx.Param), jnp.zeros((1, 28, 28, 1)))
  x = jnp.zeros((1, 16, 16, 3))
  r = ResNet(width=4, blocks=(1, 1))
  v = r.init(jax.random.PRNGKey(0), x)
  out["resnet_batchnorm"] = (lambda p, x: r.apply({"params": p, "batch_stats": v["batch_stats"]}, x),
                             v["params"], x)
  vit = ViT(dim=16, depth=2, num_heads=2)
  out["vit"] = (vit.apply, vit.init(jax.random.PRNGKey(0), x), x)
  mlp = InlineLNMLP()
  out["mlp_layernorm"] = (mlp.apply, mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 12))), jnp.zeros((1, 12)))
  t = ScanTransformer()
  tok = jnp.zeros((1, 5), jnp.int32)
  out["scan_transformer"] = (t.apply, t.init(jax.random.PRNGKey(0), tok), tok)
  return out


MODELS = _models()


def test_graphs_of_the_covered_models():
  """Every parameter element gets exactly one edge slot; the building blocks give their edges."""
  expect = {  # edge types each graph must have
      "nnx_tutorial_cnn": {graphs.CONV, graphs.DENSE, graphs.NORM_W, graphs.BIAS},
      "resnet_batchnorm": {graphs.CONV, graphs.NORM_W, graphs.BIAS, graphs.RESIDUAL},
      "vit": {graphs.CONV, graphs.ATTN_Q, graphs.ATTN_K, graphs.ATTN_V, graphs.HEAD, graphs.RESIDUAL,
              graphs.POS_EMB, graphs.NORM_W},
      "mlp_layernorm": {graphs.DENSE, graphs.NORM_W, graphs.BIAS},
      "scan_transformer": {graphs.WORD_EMB, graphs.POS_EMB, graphs.ATTN_Q, graphs.ATTN_K, graphs.HEAD,
                           graphs.RESIDUAL},
  }
  for name, (fn, params, x) in MODELS.items():
    g = graph_trace.trace_graph(fn, params, x)
    assert not g.uncovered, name
    assert expect[name] <= set(_types(g)), (name, _types(g))
    pos = np.concatenate([p.reshape(-1) for p in g.positions if p is not None])
    assert len(np.unique(pos)) == len(pos) == sum(np.size(v) for v in jax.tree.leaves(params)), name
    assert pos.max() < g.num_edges * g.num_slots
    assert g.senders.max() < g.num_nodes and g.receivers.max() < g.num_nodes


def test_residual_and_batchnorm_wiring():
  """ResNet: each residual add joins the older stream to the newer with one edge per channel; BatchNorm
  scale and shift are one node each with an edge per channel (NiNo's LayerNorm edges)."""
  fn, params, x = MODELS["resnet_batchnorm"]
  g = graph_trace.trace_graph(fn, params, x)
  blocks = {name: (s, e, t) for name, s, e, t in g.blocks}
  s, e, t = blocks["stem_norm/scale"]
  assert t == graphs.NORM_W and e - s == 4 and len(set(g.senders[s:e])) == 1
  res = [(s, e) for name, s, e, t in g.blocks if t == graphs.RESIDUAL]
  assert [e - s for s, e in res] == [4, 8]  # one add per stage, 4 then 8 channels
  assert all(len(set(g.senders[s:e])) == e - s for s, e in res)


def test_scan_stack_is_the_unrolled_stack():
  """``nn.scan`` over 3 blocks gives the graph of the 3 blocks written out."""
  tok = jnp.zeros((1, 5), jnp.int32)
  graphs_ = []
  for scan in (True, False):
    m = ScanTransformer(scan=scan)
    graphs_.append(graph_trace.trace_graph(m.apply, m.init(jax.random.PRNGKey(0), tok), tok))
  _same_graph(*graphs_)


def test_linen_out_of_order_and_nnx_give_one_graph():
  """The same MLP with LayerNorm written in Linen (layers created out of data-flow order) and NNX."""
  x = jnp.zeros((1, 12))
  lin = InlineLNMLP()
  pl = lin.init(jax.random.PRNGKey(0), x)
  gl = graph_trace.trace_graph(lin.apply, pl, x)
  m = NNXLNMLP(nnx.Rngs(0))
  pn = nnx.state(m, nnx.Param)
  gn = graph_trace.trace_graph(graph_trace.nnx_apply(m), pn, x)
  _same_graph(gl, gn)
  by_path = lambda params, g: {graphs.path_str(k): p for (k, _), p in  # noqa: E731
                               zip(jax.tree_util.tree_flatten_with_path(params)[0], g.positions, strict=True)}
  a, b = by_path(pl, gl), by_path(pn, gn)
  linen_to_nnx = {"Dense_1/kernel": "l1/kernel", "Dense_1/bias": "l1/bias", "LayerNorm_0/scale": "ln/scale",
                  "LayerNorm_0/bias": "ln/bias", "Dense_0/kernel": "l2/kernel", "Dense_0/bias": "l2/bias"}
  for linen, nnx_ in linen_to_nnx.items():
    np.testing.assert_array_equal(a[f"params/{linen}"], b[f"{nnx_}/value"])
  # the names alone read this model wrongly: Dense_0 (the output layer) first
  with pytest.raises(ValueError, match="order="):
    graphs.neural_graph(pl)


@pytest.mark.parametrize("name", list(MODELS))
def test_nino_jumps_under_jit_on_each_model(name):
  """``nino(apply_fn=..., example_input=...)`` (the shipped weights) builds the graph at init and jumps
  inside a jitted step."""
  fn, params, x = MODELS[name]
  tx = optax.chain(optax.adam(1e-2),
                   onc.nowcast(onc.predictors.nino(apply_fn=fn, example_input=x), interval=1, ctx=5,
                               horizon=3))
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(6):
    before = params
    params, state = step(params, state)
  assert int(onc.find_nowcast_state(state).n_jumps) == 1
  assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params))
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before),
                                                        strict=True)]
  assert max(moved) > 0.0


@pytest.mark.parametrize("name", ["resnet_batchnorm", "scan_transformer", "nnx_tutorial_cnn"])
def test_wnn_plus_jumps_on_traced_models(name):
  """``wnn_plus(apply_fn=, example_input=)`` reads each element's edge type from the traced graph, so the
  models its names cannot express (a BatchNorm ResNet, ``nn.scan``, NNX) jump under jit; from the names
  alone it refuses them, naming the option."""
  fn, params, x = MODELS[name]
  with pytest.raises(ValueError, match=r"wnn_plus: .*apply_fn= and example_input="):
    onc.predictors.wnn_plus().init(params)
  assert _jumps_in_six_steps(onc.predictors.wnn_plus(apply_fn=fn, example_input=x), params) == 1


def test_wnn_plus_traced_types_are_the_named_ones():
  """On a model the names express, the traced graph gives WNN+ the same edge types: the same jump."""
  m = MLP((8, 8), num_classes=3)
  x = jnp.zeros((1, 6))
  params = m.init(jax.random.PRNGKey(0), x)
  hist = jax.tree.map(lambda p: jnp.stack([p * (1 + 0.01 * i) + 0.001 * i for i in range(5)]), params)
  times = jnp.arange(-4.0, 1.0)
  out = []
  for pred in (onc.predictors.wnn_plus(), onc.predictors.wnn_plus(apply_fn=m.apply, example_input=x)):
    out.append(pred.predict(hist, times, jnp.array(3), pred.init(params))[0])
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(params),
                                                          strict=True)) > 0


def test_wnn_plus_names_what_the_trace_cannot_type():
  m = Temperature()
  x = jnp.zeros((1, 4))
  params = m.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"wnn_plus: .*params/temperature.*no edge type"):
    onc.predictors.wnn_plus(apply_fn=m.apply, example_input=x).init(params)
  with pytest.raises(ValueError, match="apply_fn and example_input together"):
    onc.predictors.wnn_plus(apply_fn=m.apply)


# ------------------------------------------------------------------------------------- the fallback

class Temperature(nn.Module):
  """An MLP whose logits are divided by a learned scalar temperature: one parameter element acting on
  every output neuron, which a neural graph cannot hold."""

  @nn.compact
  def __call__(self, x):
    t = self.param("temperature", nn.initializers.ones, ())
    return nn.Dense(3)(nn.relu(nn.Dense(6)(x))) / t


def _jumps_in_six_steps(pred, params) -> int:
  """Jumps made by six jitted Adam steps chained with ``nowcast(pred, interval=1, ctx=5)``."""
  tx = optax.chain(optax.adam(1e-2), onc.nowcast(pred, interval=1, ctx=5, horizon=3))
  st = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(6):
    u, st = step(jax.tree.map(jnp.ones_like, params), st, params)
    params = optax.apply_updates(params, u)
  return int(onc.find_nowcast_state(st).n_jumps)


def test_unsupported_layer_is_named_with_the_option():
  m = Temperature()
  x = jnp.zeros((1, 4))
  params = m.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"params/temperature .*fallback="):
    graph_trace.trace_graph(m.apply, params, x)
  with pytest.raises(ValueError, match=r"params/temperature .*fallback=predictors.linefit_plus"):
    onc.predictors.nino(apply_fn=m.apply, example_input=x).init(params)


def test_fallback_predicts_what_the_graph_cannot_express():
  """The temperature is predicted by the fallback, exactly; the rest by NiNo; a jitted run jumps."""
  m = Temperature()
  x = jnp.zeros((1, 4))
  params = m.init(jax.random.PRNGKey(0), x)
  fallback = onc.predictors.linefit()
  pred = onc.predictors.nino(apply_fn=m.apply, example_input=x, fallback=fallback)
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    state = pred.init(params)
  assert [str(x.message) for x in w if "temperature" in str(x.message)], [str(x.message) for x in w]
  keys = jax.random.split(jax.random.PRNGKey(1), 5)
  history = jax.tree.map(lambda p: jnp.stack([p + 0.1 * i + 0.01 * jax.random.normal(k, p.shape)
                                              for i, k in enumerate(keys)]), params)
  times = jnp.arange(-4.0, 1.0)
  out, _ = jax.jit(pred.predict)(history, times, jnp.int32(3), state)
  fb_state = fallback.init([params["params"]["temperature"]])
  expected, _ = jax.jit(fallback.predict)([history["params"]["temperature"]], times, jnp.int32(3), fb_state)
  np.testing.assert_array_equal(out["params"]["temperature"], expected[0])
  nino_only = onc.predictors.nino(order=["Dense_1", "Dense_0"])  # NiNo alone on the Dense layers
  dense = {"params": {k: v for k, v in params["params"].items() if k != "temperature"}}
  dense_hist = {"params": {k: v for k, v in history["params"].items() if k != "temperature"}}
  ref, _ = nino_only.predict(dense_hist, times, jnp.int32(3), nino_only.init(dense))
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves({"params": {k: v for k, v in out["params"].items()
                                                                      if k != "temperature"}}), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert _jumps_in_six_steps(pred, params) == 1


def test_fallback_with_names_leaves_norm_layers_to_it():
  """Without apply_fn, a BatchNorm between Dense layers is refused by name, or left to the fallback."""

  class BNMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True, name="Dense_0_norm")(nn.Dense(6, name="Dense_0")(x))
      return nn.Dense(3, name="Dense_1")(nn.relu(x))

  v = BNMLP().init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"Dense_0_norm: not a Dense or Conv layer.*apply_fn=.*fallback="):
    onc.predictors.nino().init(v["params"])
  with pytest.warns(UserWarning, match="Dense_0_norm/scale"):
    g_state = onc.predictors.nino(fallback=onc.predictors.linefit_plus()).init(v["params"])
  assert g_state is not None


def test_graph_without_a_leaf_keeps_every_other_edge():
  """Removing the input layer drops its edges and the input neurons; every kept element keeps its edge."""
  params = MLP((8, 6), 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 10)))
  g = graphs.neural_graph(params)
  paths = [graphs.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  k0 = paths.index("params/Dense_0/kernel")
  assert [g.fan_in(i) for i in g.leaf_groups()] == [1, 10, 1, 8, 1, 6]  # bias, kernel per layer
  assert g.leaf_paths() == paths
  g2 = g.without([k0])
  assert g2.uncovered == ("params/Dense_0/kernel",)
  assert g2.num_nodes == g.num_nodes - 10  # the 10 inputs are nodes 0..9
  assert g2.num_edges == g.num_edges - 80 - 10  # their 80 edges and 10 self-loops
  assert g2.positions[k0] is None
  for p, p2 in zip(g.positions, g2.positions, strict=True):
    if p2 is not None:
      np.testing.assert_array_equal(g.senders[p], g2.senders[p2] + 10)
      np.testing.assert_array_equal(g.receivers[p], g2.receivers[p2] + 10)
      np.testing.assert_array_equal(g.edge_type[p], g2.edge_type[p2])
  assert sorted(n for n in set(g2.receivers.tolist())) == list(range(g2.num_nodes))
  leaves = [jnp.asarray(np.random.default_rng(0).normal(size=(1, *x.shape)), jnp.float32)
            for x in jax.tree.leaves(params)]
  back = g2.scatter(g2.gather(leaves))
  for i, (x, y) in enumerate(zip(leaves, back, strict=True)):
    assert (y is None) == (i == k0)
    if y is not None:
      np.testing.assert_array_equal(x[0], y)
  assert sum(b - a for _, a, b, _ in g2.blocks) == g2.num_edges


def test_max_fan_in_leaves_wide_layers_to_the_fallback():
  """max_fan_in: the input layer (fan-in 10 > 8) is predicted by the fallback exactly (at most
  fallback_horizon ahead), NiNo predicts the rest on the graph without it, no warning; a jitted run jumps."""
  params = MLP((8, 6), 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 10)))
  fallback = onc.predictors.linefit()
  pred = onc.predictors.nino(fallback=fallback, max_fan_in=8, fallback_horizon=2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    state = pred.init(params)
  keys = jax.random.split(jax.random.PRNGKey(1), 5)
  history = jax.tree.map(lambda p: jnp.stack([p + 0.1 * i + 0.01 * jax.random.normal(k, p.shape)
                                              for i, k in enumerate(keys)]), params)
  times = jnp.arange(-4.0, 1.0)
  out, _ = jax.jit(pred.predict)(history, times, jnp.int32(3), state)
  kernel = history["params"]["Dense_0"]["kernel"]
  expected, _ = fallback.predict([kernel], times, jnp.int32(2), fallback.init([kernel[0]]))
  np.testing.assert_allclose(out["params"]["Dense_0"]["kernel"], expected[0], rtol=1e-6)
  rest = history["params"]["Dense_1"]["kernel"]
  line, _ = fallback.predict([rest], times, jnp.int32(3), fallback.init([rest[0]]))
  assert np.all(np.isfinite(out["params"]["Dense_1"]["kernel"]))
  assert not np.allclose(out["params"]["Dense_1"]["kernel"], line[0], atol=1e-3)  # NiNo's, not the line's
  assert _jumps_in_six_steps(pred, params) == 1
  with pytest.raises(ValueError, match="max_fan_in leaves .* fallback="):
    onc.predictors.nino(max_fan_in=8)
  with pytest.raises(ValueError, match="fallback_horizon must be a positive int"):
    onc.predictors.nino(fallback=fallback, fallback_horizon=0)
  with pytest.raises(ValueError, match="max_fan_in must be a positive int"):
    onc.predictors.nino(fallback=fallback, max_fan_in=0)
  no_bias = {"params": {"Dense_0": {"kernel": jnp.ones((4, 3))}, "Dense_1": {"kernel": jnp.ones((3, 2))}}}
  with pytest.raises(ValueError, match="max_fan_in=2 left every tensor"):
    onc.predictors.nino(fallback=fallback, max_fan_in=2).init(no_bias)
  # WNN+ reads edge types from a model's named tree, and the fallback gets the leaves as a list.
  with pytest.raises(ValueError, match=r"fallback 'wnn_plus' cannot predict .*params/Dense_0/kernel.*"
                                       r"linefit_plus"):
    onc.predictors.nino(fallback=onc.predictors.wnn_plus(), max_fan_in=8).init(params)


def test_nino_argument_errors():
  with pytest.raises(ValueError, match="apply_fn and example_input together"):
    onc.predictors.nino(apply_fn=lambda p, x: x)
  with pytest.raises(TypeError, match="fallback must be a Predictor"):
    onc.predictors.nino(fallback="linefit")
