"""NiNo: neuron interaction and nowcasting networks (Knyazev et al., ICLR 2025), in Flax over jraph graphs.

The model reads the last ``ctx`` states of every parameter as features of the edges of the model's neural
graph (``optax_nowcast.graphs``), runs ``M`` message-passing layers and predicts, per edge and slot, the
change of the (scaled) parameter ``k`` intervals ahead.

Per parameter tensor ``p`` (one scaling group), over all its elements and the ``ctx`` states,

.. math::

  \\mu_p = \\operatorname{mean}(w), \\quad \\sigma_p = \\operatorname{std}_{ddof=1}(w), \\quad
  \\tilde w = (w - \\mu_p) / (\\sigma_p + 10^{-6}), \\quad
  \\hat w_{\\tau+k} = (\\tilde w_\\tau + \\Delta_k) \\, \\sigma_p + \\mu_p .

Network (``D = 128``, ``M = 3``, SiLU), for an edge ``u -> v``:

* edge embedding ``e = Linear(45 -> D)(x_e) + Emb[type]``; node embedding ``h = Linear(8 -> D)(LPE)``;
* layer: ``[gamma, beta] = Linear(D -> 2D)(e)``, ``m = gamma * Linear(2D -> D)([h_v, h_u]) + beta``,
  ``a_v = mean of incoming m`` (self-loops included), ``h_v <- SiLU(Linear(Linear(2D -> D)([h_v, a_v])))``
  (no activation after the last layer); after layers 1..M-1:
  ``e <- Linear(SiLU(L_e e + L_s h_u + L_t h_v))``;
* head (DMS): ``Linear -> SiLU -> Linear(D -> 9 K)``, one output per slot and horizon ``k = 1..K``; NiNo++
  options: an LSTM or GRU run over the horizons instead (``head="lstm"`` / ``"gru"``, state width
  ``rnn_hidden``, 32 by default, since the cell's gate work over K horizons and every edge dominates a
  training step), its input the edge embedding at every step and a
  ``Linear(rnn_hidden -> 9)`` read-out per horizon.

``nino(weights=...)`` loads the official checkpoint (``.pt``, read with ``weights_only=True`` if torch is
installed, or its ``.npz`` conversion) and returns a :class:`Predictor` for :func:`optax_nowcast.nowcast`.
The graph, its LPE and the index maps are built once at ``init`` (host numpy), and the whole prediction is
one jitted function of the history with those as constants. A jump runs the network on fused weights
(:func:`fuse_weights`, :func:`fused_apply`): the same outputs with about a third of the per-edge
arithmetic.

Example (NiNo's schedule: states every 200 steps, a jump every 1,000 steps, k-decay from 40)::

  tx = optax.chain(optax.adam(6e-3), onc.nowcast(onc.predictors.nino(weights="nino.pt"), interval=200,
                   ctx=5, horizon=onc.schedules.k_decay(40, total_steps=10_000)))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optax_nowcast import graph_trace, weights_io
from optax_nowcast import graphs as graphs_lib
from optax_nowcast._jraph import GraphsTuple, segment_mean
from optax_nowcast.predictors.base import Predictor, full_precision


class PairDense(nn.Module):
  """``Linear(2D -> D)([h_v, h_u])`` for every edge ``u -> v``, computed at the nodes then gathered.

  ``[h_v, h_u] @ K + b = (h @ K[:D])[v] + (h @ K[D:])[u] + b``: N x D x D instead of E x 2D x D work
  (same parameters as ``nn.Dense``).
  """

  features: int

  @nn.compact
  def __call__(self, h: jax.Array, receivers: jax.Array, senders: jax.Array) -> jax.Array:
    d = h.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2 * d, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return (h @ kernel[:d])[receivers] + (h @ kernel[d:])[senders] + bias


class RNNStep(nn.Module):
  """One step of NiNo++'s recurrent head over the horizons: ``carry, gx -> carry, Dense(slots)(h)``.

  The input of every step is the same edge embedding ``e``, so its part of the gates, ``gx = e W_x + b_x``
  (``edge_out_rnn_in``), is computed once outside the scan; a step adds the recurrent part ``h W_h + b_h``.
  The cells are flax's ``GRUCell`` and ``OptimizedLSTMCell`` (``tests/test_nino.py`` checks both), with the
  gate blocks in the order ``r, z, n`` and ``i, f, g, o``:

  .. math::

    \\text{GRU:}\\ r, z = \\sigma(gx_{r,z} + h W_{r,z} + b_{r,z}), \\;
    n = \\tanh(gx_n + r \\odot (h W_n + b_n)), \\; h' = (1 - z) \\odot n + z \\odot h;
    \\quad \\text{LSTM:}\\ c' = \\sigma(f) \\odot c + \\sigma(i) \\odot \\tanh(g), \\;
    h' = \\sigma(o) \\odot \\tanh(c') .
  """

  kind: str
  hidden: int
  slots: int

  @nn.compact
  def __call__(self, carry: Any, gx: jax.Array) -> tuple[Any, jax.Array]:
    n_gates = 3 if self.kind == "gru" else 4
    w = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, n_gates * self.hidden))
    b = self.param("recurrent_bias", nn.initializers.zeros_init(), (n_gates * self.hidden,))
    if self.kind == "gru":
      h = carry
      xr, xz, xn = jnp.split(gx, 3, axis=-1)
      hr, hz, hn = jnp.split(h @ w + b, 3, axis=-1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      h = (1.0 - z) * jnp.tanh(xn + r * hn) + z * h
      carry = h
    else:
      c, h = carry
      i, f, g, o = jnp.split(gx + h @ w + b, 4, axis=-1)
      c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
      h = nn.sigmoid(o) * jnp.tanh(c)
      carry = (c, h)
    return carry, nn.Dense(self.slots, name="edge_out_rnn_proj")(h)


class NiNoGNN(nn.Module):
  """NiNo's network. Input: a ``GraphsTuple`` with ``nodes`` the node features ``(N, lpe)`` and ``edges`` a
  dict ``{"x": (E, slots*ctx), "type": (E,) int}``. Output: ``(E, slots, horizons)`` scaled deltas.

  ``node_features`` is the width of the node input (8 for the LPE; 9 with eigenvector centrality).
  """

  hidden: int = 128
  layers: int = 3
  ctx: int = 5
  slots: int = graphs_lib.MAX_SLOTS
  horizons: int = 40
  edge_types: int = graphs_lib.NUM_EDGE_TYPES
  head: str = "mlp"  # "mlp" (DMS), "lstm" or "gru" (NiNo++)
  rnn_hidden: int = 32  # the recurrent head's state width
  final_edge_update: bool = False

  def setup(self):
    d = self.hidden
    self.node_proj = nn.Dense(d, name="node_proj")
    self.edge_proj = nn.Dense(d, name="edge_proj")
    self.layer_embed = nn.Embed(self.edge_types, d, name="layer_embed")
    self.edge_encoder = [nn.Dense(2 * d, name=f"conv{i}_edge_encoder") for i in range(self.layers)]
    self.pre = [PairDense(d, name=f"conv{i}_pre") for i in range(self.layers)]
    self.post = [nn.Dense(d, name=f"conv{i}_post") for i in range(self.layers)]
    self.lin = [nn.Dense(d, name=f"conv{i}_lin") for i in range(self.layers)]
    n_upd = self.layers if self.final_edge_update else self.layers - 1
    self.lin_e = [nn.Dense(d, name=f"edge_update{i}_lin_e") for i in range(n_upd)]
    self.lin_s = [nn.Dense(d, name=f"edge_update{i}_lin_s") for i in range(n_upd)]
    self.lin_t = [nn.Dense(d, name=f"edge_update{i}_lin_t") for i in range(n_upd)]
    self.lin1 = [nn.Dense(d, name=f"edge_update{i}_lin1") for i in range(n_upd)]
    if self.head == "mlp":
      self.out0 = nn.Dense(d, name="edge_out0")
      self.out2 = nn.Dense(self.slots * self.horizons, name="edge_out2")
    elif self.head in ("lstm", "gru"):
      # The input part of the gates once (``RNNStep``), then a scan over the K horizons of a rematerialised
      # step: backprop keeps one carry per step instead of every step's gate activations.
      self.rnn_in = nn.Dense((3 if self.head == "gru" else 4) * self.rnn_hidden, name="edge_out_rnn_in")
      self.rnn = nn.scan(nn.remat(RNNStep), variable_broadcast="params", split_rngs={"params": False},
                         in_axes=nn.broadcast, out_axes=-1, length=self.horizons)(
                             self.head, self.rnn_hidden, self.slots, name="edge_out_rnn")
    else:
      raise ValueError(f"head must be 'mlp', 'lstm' or 'gru', got {self.head!r}.")

  def embed(self, g: GraphsTuple) -> tuple[jax.Array, jax.Array]:
    return self.node_proj(g.nodes), self.edge_proj(g.edges["x"]) + self.layer_embed(g.edges["type"])

  def message_passing(self, g: GraphsTuple, h: jax.Array, e: jax.Array, record: dict | None = None):
    n = h.shape[0]
    s, r = g.senders, g.receivers
    n_upd = len(self.lin_e)
    for i in range(self.layers):
      gamma, beta = jnp.split(self.edge_encoder[i](e), 2, axis=-1)
      pre = self.pre[i](h, r, s)
      msg = gamma * pre + beta
      agg = segment_mean(msg, r, n)
      out = self.lin[i](self.post[i](jnp.concatenate([h, agg], axis=-1)))
      h = nn.silu(out) if i < self.layers - 1 else out
      if record is not None:
        record.update({f"msg_{i}": msg, f"agg_{i}": agg, f"node_{i + 1}": h})
      if i < n_upd:
        e = self.lin1[i](nn.silu(self.lin_e[i](e) + self.lin_s[i](h)[s] + self.lin_t[i](h)[r]))
        if record is not None:
          record[f"edge_{i + 1}"] = e
    return h, e

  def decode(self, e: jax.Array) -> jax.Array:
    if self.head == "mlp":
      return self.out2(nn.silu(self.out0(e))).reshape(e.shape[0], self.slots, self.horizons)
    zeros = jnp.zeros((e.shape[0], self.rnn_hidden), e.dtype)
    carry = (zeros, zeros) if self.head == "lstm" else zeros
    _, out = self.rnn(carry, self.rnn_in(e))  # (E, slots, K)
    return out

  def decode_k(self, e: jax.Array, k: jax.Array) -> jax.Array:
    """The head's output for horizon ``k`` only (1-based, may be traced): ``(E, slots)``.

    For the DMS head this slices the last layer to the ``slots`` columns of horizon ``k`` (as the official
    inference path does), 1/K of the head's work.
    """
    kk = jnp.clip(jnp.asarray(k, jnp.int32), 1, self.horizons) - 1
    if self.head != "mlp":
      return jax.lax.dynamic_index_in_dim(self.decode(e), kk, axis=2, keepdims=False)
    z = nn.silu(self.out0(e))
    p = jax.tree.map(jnp.asarray, self.out2.variables["params"])
    w = jax.lax.dynamic_index_in_dim(p["kernel"].reshape(-1, self.slots, self.horizons), kk, 2, False)
    b = jax.lax.dynamic_index_in_dim(p["bias"].reshape(self.slots, self.horizons), kk, 1, False)
    return z @ w + b

  def __call__(self, g: GraphsTuple, k: jax.Array | None = None, edges: jax.Array | None = None) -> jax.Array:
    """``(E, slots, horizons)`` deltas, or ``(E, slots)`` for horizon ``k`` when given.

    ``edges`` (int indices, training only): decode just those edges, ``(len(edges), slots, horizons)``; the
    head works on each edge alone, so this is the full output's rows ``edges`` at a fraction of the cost.
    """
    h, e = self.embed(g)
    _, e = self.message_passing(g, h, e)
    if edges is not None:
      return self.decode(e[edges])
    if k is None:
      return self.decode(e)
    if self.head == "mlp" and not self.out2.has_variable("params", "kernel"):
      self.decode(e)  # create the head's parameters at init
    return self.decode_k(e, k)

  def intermediates(self, g: GraphsTuple) -> dict[str, jax.Array]:
    """Named intermediates: node_emb, edge_emb, msg_l, agg_l, node_l, edge_l and dms_raw."""
    h, e = self.embed(g)
    rec = {"node_emb": h, "edge_emb": e}
    _, e = self.message_passing(g, h, e, rec)
    rec["dms_raw"] = self.decode(e).reshape(e.shape[0], -1)
    return rec


# ------------------------------------------------------------------------------------ fused inference

def fuse_weights(model: NiNoGNN, variables: Mapping[str, Any]) -> dict[str, Any]:
  """:class:`NiNoGNN`'s weights rearranged for :func:`fused_apply` (float32, products at full precision).

  Inference needs per edge only what reaches the output: the edges ``e_i`` after each edge update and,
  from message passing, the ``U`` layers whose node states feed an edge update (``U = M - 1``: the last
  layer's node states never reach the edges). Every per-edge linear map of ``e_i`` follows another one
  with no activation between them, so their products are taken once here. With ``u_0 = x`` (the edge's
  input, ``e_0 = u_0 P_0 + b_0[type]``: the projection and the type embedding),
  ``u_{i+1} = \\operatorname{SiLU}(e_i L_e + (h L_s)_u + (h L_t)_v)`` and
  ``e_{i+1} = u_{i+1} P_{i+1} + b_{i+1}``:

  .. math::

    [\\gamma_i \\,|\\, e_i L_e] = u_i P_i [G_i \\,|\\, L_{e,i}] + \\dots, \\qquad
    \\operatorname{mean}_{u \\to v} \\beta_i = (\\operatorname{mean}_{u \\to v} u_i)\\, P_i B_i + \\dots,

  the FiLM bias ``beta`` averaged before its map (the mean of an affine map is the map of the mean), and the
  head's first layer ``e_U W_0 = u_U (P_U W_0)``. Per edge this leaves ``D x 2D`` (layers after the first),
  ``D x D`` (the head) and the input's ``45 x 2D``: about ``7 D^2`` flops instead of ``19 D^2``. The result
  equals :meth:`NiNoGNN.__call__` with ``k`` up to float rounding (``tests/test_nino.py``). Pure ``jnp``
  (a few ``D x 2D`` products): ``nino()`` fuses its weights once when it is built, traced ones included.
  """
  if model.head != "mlp":
    raise ValueError(f"fuse_weights: only the DMS head ('mlp') is fused, got head={model.head!r}.")
  p = variables["params"]
  d = model.hidden
  n_upd = model.layers if model.final_edge_update else model.layers - 1

  def dense(name):
    return jnp.asarray(p[name]["kernel"], jnp.float32), jnp.asarray(p[name]["bias"], jnp.float32)

  def mm(a, b):  # full float32 products on any backend (TPU and GPU default to bf16 passes)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)

  w_in, b_in = dense("edge_proj")
  b_in = b_in + jnp.asarray(p["layer_embed"]["embedding"], jnp.float32)  # (types, D): a bias per edge type
  layers = []
  for i in range(n_upd):
    w_enc, b_enc = dense(f"conv{i}_edge_encoder")
    w_e, b_e = dense(f"edge_update{i}_lin_e")
    w_ge, b_ge = jnp.concatenate([w_enc[:, :d], w_e], 1), jnp.concatenate([b_enc[:d], b_e])
    w_pre, b_pre = dense(f"conv{i}_pre")
    layers.append({
        "edge": (mm(w_in, w_ge), mm(b_in, w_ge) + b_ge),  # -> [gamma | e L_e]
        "beta": (mm(w_in, w_enc[:, d:]), mm(b_in, w_enc[:, d:]) + b_enc[d:]),
        "pre": (w_pre[:d], w_pre[d:], b_pre),
        "post": dense(f"conv{i}_post"), "lin": dense(f"conv{i}_lin"),
        "lin_s": dense(f"edge_update{i}_lin_s"), "lin_t": dense(f"edge_update{i}_lin_t")})
    w_in, b_in = dense(f"edge_update{i}_lin1")
  w0, b0 = dense("edge_out0")
  return {"node_proj": dense("node_proj"), "layers": layers, "out0": (mm(w_in, w0), mm(b_in, w0) + b0),
          "out2": dense("edge_out2")}


def fused_apply(fused: Mapping[str, Any], g: GraphsTuple, k: jax.Array, *, layers: int, slots: int,
                horizons: int) -> jax.Array:
  """``(E, slots)``: :class:`NiNoGNN`'s output for horizon ``k`` from :func:`fuse_weights`' arrays.

  ``g.edges["x"]`` may have fewer columns than the model's ``slots * ctx`` (the graph's own slots: the
  rest would be zeros).
  """
  s, r = g.senders, g.receivers
  n = g.nodes.shape[0]
  types = g.edges["type"]
  count = jax.ops.segment_sum(jnp.ones(r.shape, jnp.float32), r, n)
  inv = (1.0 / jnp.maximum(count, 1.0))[:, None]

  def mean(v):  # over each node's incoming edges (0 for a node with none, as segment_mean)
    return jax.ops.segment_sum(v, r, n) * inv

  # The edge input may be narrower than the model's (a graph with fewer slots: 5 of 45 columns for
  # Dense-only models); the missing columns are zeros, so the first layer's rows for them drop out.
  def affine(u, w, b):  # a bias per edge type (the first layer's) or one for all
    return u @ w[: u.shape[-1]] + (b[types] if b.ndim == 2 else b)

  def mean_affine(u, w, b):
    if b.ndim == 2:
      return mean(u) @ w[: u.shape[-1]] + mean(jax.nn.one_hot(types, b.shape[0], dtype=u.dtype)) @ b
    return mean(u) @ w + jnp.where(count > 0, 1.0, 0.0)[:, None] * b

  w, b = fused["node_proj"]
  h = g.nodes @ w + b
  u = g.edges["x"]
  d = h.shape[-1]
  for i, lay in enumerate(fused["layers"]):
    ge = affine(u, *lay["edge"])
    gamma, le = ge[:, :d], ge[:, d:]
    w_v, w_u, b_pre = lay["pre"]
    pre = (h @ w_v)[r] + (h @ w_u)[s] + b_pre
    agg = mean(gamma * pre) + mean_affine(u, *lay["beta"])
    (wp, bp), (wl, bl) = lay["post"], lay["lin"]
    out = (jnp.concatenate([h, agg], axis=-1) @ wp + bp) @ wl + bl
    h = nn.silu(out) if i < layers - 1 else out
    (ws, bs), (wt, bt) = lay["lin_s"], lay["lin_t"]
    u = nn.silu(le + (h @ ws + bs)[s] + (h @ wt + bt)[r])
  y = nn.silu(affine(u, *fused["out0"]))
  kk = jnp.clip(jnp.asarray(k, jnp.int32), 1, horizons) - 1
  w2, b2 = fused["out2"]
  w2 = jax.lax.dynamic_index_in_dim(w2.reshape(-1, slots, horizons), kk, 2, False)
  b2 = jax.lax.dynamic_index_in_dim(b2.reshape(slots, horizons), kk, 1, False)
  return y @ w2 + b2


# ------------------------------------------------------------------------------------ official weights

_OFFICIAL = {  # our module name -> official state_dict prefix
    "node_proj": "node_proj.fc.0", "edge_proj": "edge_proj.fc.0", "edge_out0": "edge_out.fc.0",
    "edge_out2": "edge_out.fc.2",
}


def _official_name(ours: str) -> str:
  if ours in _OFFICIAL:
    return _OFFICIAL[ours]
  if ours.startswith("conv"):
    i, part = ours[4:].split("_", 1)
    return f"gnn.convs.{i}." + {"edge_encoder": "edge_encoder", "pre": "pre_nns.0.0", "post": "post_nns.0.0",
                                 "lin": "lin"}[part]
  if ours.startswith("edge_update"):
    i, part = ours[len("edge_update"):].split("_", 1)
    return f"gnn.edge_update.{i}.{part}"
  raise KeyError(ours)


def load_official_weights(path: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, dict[str, Any]]:
  """Reads the official NiNo checkpoint (``.pt`` or ``.npz``, or a state dict) into our Flax params.

  Returns ``(params, config)`` where ``config`` holds ``hidden``, ``layers``, ``horizons``, ``ctx``,
  ``slots``, ``lpe`` inferred from the shapes. Only the graph model (``nino_no_posw``-style checkpoints) is
  read here; the WNN+ checkpoints (``nino_mlp``) have no graph and belong to ``predictors.wnn``.
  """
  sd = weights_io.read_state_dict(path)
  src = weights_io.source_name(path)
  if "gnn.convs.0.edge_encoder.weight" not in sd:
    raise ValueError(f"{src} is not a NiNo graph checkpoint (no gnn.convs.0.edge_encoder.weight); keys "
                     f"start {sorted(sd)[:5]}.")
  node_proj = weights_io.tensor(sd, "node_proj.fc.0.weight", src)
  hidden = node_proj.shape[0]
  layers = len({k.split(".")[2] for k in sd if k.startswith("gnn.convs.")})
  n_upd = len({k.split(".")[2] for k in sd if k.startswith("gnn.edge_update.")})
  in_width = weights_io.tensor(sd, "edge_proj.fc.0.weight", src).shape[1]
  out_width = weights_io.tensor(sd, "edge_out.fc.2.weight", src).shape[0]
  slots = graphs_lib.MAX_SLOTS
  edge_types = weights_io.tensor(sd, "layer_embed.weight", src).shape[0]
  config = {"hidden": hidden, "layers": layers, "ctx": in_width // slots, "slots": slots,
            "horizons": out_width // slots, "edge_types": edge_types,
            "final_edge_update": n_upd == layers, "lpe": node_proj.shape[1]}
  model = NiNoGNN(**{k: v for k, v in config.items() if k != "lpe"})
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _dummy_graph(config))["params"]
  params = {}
  for name, leaves in shapes.items():
    if name == "layer_embed":
      params[name] = {"embedding": jnp.asarray(weights_io.tensor(sd, "layer_embed.weight", src,
                                                                 leaves["embedding"].shape))}
      continue
    off = _official_name(name)
    kernel = weights_io.tensor(sd, off + ".weight", src, leaves["kernel"].shape[::-1])  # torch: (out, in)
    bias = weights_io.tensor(sd, off + ".bias", src, leaves["bias"].shape)
    params[name] = {"kernel": jnp.asarray(kernel.T), "bias": jnp.asarray(bias)}
  return {"params": params}, config


def nino_template(config: Mapping[str, Any]) -> Any:
  """The structure of our NiNo's params for ``config`` (what a ``.msgpack`` file is read into)."""
  model = NiNoGNN(**{k: v for k, v in config.items() if k not in ("lpe", "node_features")})
  tiny = {"params": {"Dense_0": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}}
  g = graphs_lib.neural_graph(tiny)
  x = jnp.zeros((g.num_edges, model.slots * model.ctx))
  return model.init(jax.random.PRNGKey(0), make_graphs_tuple(g, x, jnp.zeros((g.num_nodes, config["lpe"]))))


def _dummy_graph(config) -> GraphsTuple:
  return GraphsTuple(nodes=jnp.zeros((2, config["lpe"])),
                     edges={"x": jnp.zeros((2, config["slots"] * config["ctx"])),
                            "type": jnp.zeros((2,), jnp.int32)},
                     senders=jnp.array([0, 1]), receivers=jnp.array([1, 0]), n_node=jnp.array([2]),
                     n_edge=jnp.array([2]), globals=None)


# ------------------------------------------------------------------------------------------ predictor

def scale_history(leaves: list[jax.Array], eps: float = 1e-6):
  """NiNo's per-tensor scaling of ``(ctx, *shape)`` histories: returns (scaled, mu, sigma) per leaf."""
  out = []
  for h in leaves:
    h32 = h.astype(jnp.float32)
    mu = jnp.mean(h32)
    sigma = jnp.std(h32, ddof=1)
    out.append(((h32 - mu) / (sigma + eps), mu, sigma))
  return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def make_graphs_tuple(graph: graphs_lib.NeuralGraph, edge_x: jax.Array, node_feat: np.ndarray) -> GraphsTuple:
  return GraphsTuple(nodes=jnp.asarray(node_feat), edges={"x": edge_x, "type": jnp.asarray(graph.edge_type)},
                     senders=jnp.asarray(graph.senders), receivers=jnp.asarray(graph.receivers),
                     n_node=jnp.asarray([graph.num_nodes]), n_edge=jnp.asarray([graph.num_edges]),
                     globals=None)


def graph_node_features(g: graphs_lib.NeuralGraph, width: int, kind: str = "lpe",
                        seed: int = 0) -> np.ndarray:
  """``(N, width)`` node features: the Laplacian PE (``"lpe"``), or (NiNo++, ``"lpe+centrality"``)
  ``width - 1`` eigenvectors and the eigenvector centrality as the last column."""
  if kind == "lpe":
    return graphs_lib.laplacian_pe(g, width, seed=seed)
  return np.concatenate([graphs_lib.laplacian_pe(g, width - 1, seed=seed),
                         graphs_lib.eigenvector_centrality(g)[:, None]], axis=1).astype(np.float32)


def nino(weights: str | os.PathLike | Mapping[str, Any] | None = None, *, model_params: Any = None,
         config: Mapping[str, Any] | None = None, node_features: str | None = None, lpe_seed: int = 0,
         lpe: np.ndarray | None = None, order: Sequence[str] | None = None,
         subgraphs: str | None = None, apply_fn: Callable[..., Any] | None = None,
         example_input: Any = None, fallback: Predictor | None = None,
         max_fan_in: int | None = None, fallback_horizon: int | None = None) -> Predictor:
  """The NiNo predictor.

  Args:
    weights: the official checkpoint (``.pt``/``.npz`` path or a state dict), or a ``.msgpack`` file
      written by ``python -m optax_nowcast.metatrain train --predictor nino``. With neither this nor
      ``model_params``: the NiNo trained by this project and shipped in ``optax_nowcast/pretrained``
      (see its ``MODEL_CARD.md``).
    model_params: our own Flax params for :class:`NiNoGNN` (e.g. from ``optax_nowcast.metatrain``), with
      ``config`` its constructor arguments plus ``lpe`` (node feature width). Give this or ``weights``.
    node_features: ``"lpe"`` (NiNo) or ``"lpe+centrality"`` (NiNo++: LPE with ``lpe - 1`` eigenvectors and
      eigenvector centrality as the last column). Default: the one the weights were trained with (their
      config's ``node_features``), else ``"lpe"``.
    lpe_seed: seed of the sparse eigensolver's start vector (graphs of 100+ nodes).
    lpe: a fixed node-feature matrix to use instead (e.g. the reference's, for parity checks).
    order: the top-level module names in forward order, if their names do not sort that way
      (see ``graphs.neural_graph``).
    apply_fn: the model's forward ``apply_fn(params, *example_input)`` (Linen's ``model.apply``, closing
      over ``batch_stats`` and eval flags; :func:`optax_nowcast.graph_trace.nnx_apply` for NNX). With it,
      the graph is read from the forward pass (:func:`optax_nowcast.graph_trace.trace_graph`): normalisation
      layers, residual connections, attention, ``nn.scan`` stacks and any creation order. Without it, from
      the parameter names (:func:`optax_nowcast.graphs.neural_graph`: Dense/Conv stacks, GPT-style models).
    example_input: an input batch of one for ``apply_fn`` (a tuple for several arguments).
    fallback: a predictor (e.g. ``linefit_plus()``) for the parameters the graph cannot express (a custom
      layer, a scalar temperature; with names, any layer that is not Dense/Conv in a stack); NiNo predicts
      the rest, and ``init`` warns once naming them. Default: ``init`` raises naming them.
    max_fan_in: leave the weight tensors whose neurons receive more than this many of their edges (a
      Dense ``(in, out)`` kernel: ``in``; a 784-pixel input layer) to ``fallback``, which is then required.
      A jump's work grows with the edges of the graph (``fuse_weights``: about ``7 D^2`` flops and ten
      passes over ``(E, D)`` arrays per edge, ``D = 128``), so on a 784-256-128-10 MLP the input layer's
      200,704 edges are 85 % of it; without them the graph network runs on the other 34,000 (their neurons
      keep their other edges; input neurons left with none are dropped from the graph). Default: NiNo
      predicts every tensor of the graph.
    fallback_horizon: the most intervals ahead the fallback predicts (it is asked for ``min(k,
      fallback_horizon)``): NiNo is called with horizons up to 40 intervals (k-decay), far beyond where a
      line fit through 5 states is sound (``linefit_plus`` is run at 5 on its own). Default: NiNo's ``k``.
    subgraphs: ``None`` (one graph, as NiNo) or ``"module"``: the graph network runs on one top-level
      module's subgraph at a time (``graphs.split_graph``; node features computed per subgraph), so the
      jump's scratch memory is bounded by the largest module instead of the model. Messages do not cross
      module boundaries, so predictions differ from the whole-graph ones where modules meet.

  Returns:
    A :class:`Predictor`; its ``init`` builds the graph of the params it is given.

  Example (an untrained :class:`NiNoGNN`; pass ``weights=`` the official ``nino_no_posw`` checkpoint for
  real use):

  >>> import jax, jax.numpy as jnp, optax, optax_nowcast as onc
  >>> from optax_nowcast import graphs
  >>> params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
  ...                      "Dense_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}}
  >>> g = graphs.neural_graph(params)
  >>> gnn = NiNoGNN(hidden=16, horizons=10)
  >>> x = jnp.zeros((g.num_edges, gnn.slots * gnn.ctx))
  >>> weights = gnn.init(jax.random.PRNGKey(0), make_graphs_tuple(g, x, jnp.zeros((g.num_nodes, 8))))
  >>> predictor = nino(model_params=weights, config={"hidden": 16, "horizons": 10, "lpe": 8})
  >>> tx = optax.chain(optax.adam(1e-2), onc.nowcast(predictor, interval=2, ctx=5, horizon=3))
  >>> state = tx.init(params)
  >>> for _ in range(11):  # states after 2, 4, ..., 10 steps; the 11th update is the jump
  ...   updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  ...   params = optax.apply_updates(params, updates)
  >>> int(onc.find_nowcast_state(state).n_jumps)
  1
  """
  model_params, config = weights_io.resolve(weights, model_params, config, load_official_weights,
                                            nino_template, "NiNoGNN arguments plus 'lpe'", default="nino")
  n_feat = int(config.pop("lpe", 8))
  trained_with = config.pop("node_features", None)
  if node_features is None:
    node_features = trained_with or "lpe"
  elif trained_with is not None and node_features != trained_with:
    raise ValueError(f"node_features={node_features!r}, but these weights were trained with "
                     f"{trained_with!r}; leave node_features unset to use theirs.")
  if node_features not in ("lpe", "lpe+centrality"):
    raise ValueError(f"node_features must be 'lpe' or 'lpe+centrality', got {node_features!r}.")
  if subgraphs not in (None, "module"):
    raise ValueError(f"subgraphs must be None or 'module', got {subgraphs!r}.")
  if subgraphs is not None and lpe is not None:
    raise ValueError("lpe= fixes the node features of one whole graph; it cannot be used with subgraphs=.")
  model = NiNoGNN(**config)
  ctx = model.ctx
  cache: dict[Any, tuple[Any, Any]] = {}
  # Jumps run on the fused weights (``fuse_weights``: the same outputs, a third of the per-edge work), fused
  # once here (in ``jnp``, so traced weights work too: ``nino()`` built inside a jitted function).
  fused = model.head == "mlp"
  weights = fuse_weights(model, model_params) if fused else model_params

  def gnn(w, gt: GraphsTuple, k) -> jax.Array:
    if not fused:
      return model.apply(w, gt, k)
    return fused_apply(w, gt, k, layers=model.layers, slots=model.slots, horizons=model.horizons)

  def features(g):
    return graph_node_features(g, n_feat, node_features, seed=lpe_seed)

  args = graph_trace.forward_args("nino", apply_fn, example_input)
  if fallback is not None and not isinstance(fallback, Predictor):
    raise TypeError(f"nino: fallback must be a Predictor such as predictors.linefit_plus(), got "
                    f"{type(fallback).__name__}.")
  if fallback is not None and fallback.min_ctx > ctx:
    raise ValueError(f"nino: fallback {fallback.name!r} needs ctx >= {fallback.min_ctx}; NiNo runs with "
                     f"ctx={ctx}.")
  for name, value in (("max_fan_in", max_fan_in), ("fallback_horizon", fallback_horizon)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"nino: {name} must be a positive int (or None), got {value!r}.")
  if max_fan_in is not None and fallback is None:
    raise ValueError("nino: max_fan_in leaves the widest tensors to another predictor; pass "
                     "fallback=predictors.linefit_plus() (or another predictor) with it.")

  def build(params) -> graphs_lib.NeuralGraph:
    partial = fallback is not None
    try:
      if apply_fn is not None:
        return graph_trace.trace_graph(apply_fn, params, *args, allow_partial=partial)
      return graphs_lib.neural_graph(params, order, allow_partial=partial)
    except ValueError as e:
      if apply_fn is not None:  # the trace's message names the option already
        raise ValueError(f"nino: {e}") from e
      raise ValueError(f"nino: {e} Pass apply_fn= and example_input= (a batch of one) to read the graph "
                       "from the forward pass instead of the parameter names, or "
                       "fallback=predictors.linefit_plus() to predict what the graph cannot express with "
                       "another predictor.") from e

  def init(params):
    g = build(params)
    if g.uncovered:
      warnings.warn(f"nino: {', '.join(g.uncovered)} are not in the neural graph; {fallback.name!r} "
                    "predicts them.", stacklevel=2)
    if max_fan_in is not None:
      g = g.without([i for i in g.leaf_groups() if g.fan_in(i) > max_fan_in])
    if not g.leaf_groups():
      hint = f" (max_fan_in={max_fan_in} left every tensor to the fallback)" if max_fan_in else ""
      raise ValueError(f"nino: no parameter is in the neural graph{hint}.")
    if subgraphs == "module":
      sub = graphs_lib.split_graph(g, graphs_lib.module_parts(g, params))
      feat = np.zeros((len(sub.names), sub.num_nodes, n_feat), np.float32)
      for i in range(len(sub.names)):
        feat[i, : len(sub.part_nodes[i])] = features(sub.part_graph(i, g))
      extra = (sub, feat)
    else:
      feat = np.asarray(lpe, np.float32) if lpe is not None else features(g)
      if feat.shape != (g.num_nodes, n_feat):
        raise ValueError(f"node features have shape {feat.shape}, the model needs ({g.num_nodes}, {n_feat}).")
      extra = (None, feat)
    # Keyed by the leaf shapes: wrappers (nnx.Optimizer) may hand init and update differently
    # boxed trees with the same leaves in the same order.
    cache[tuple(np.shape(x) for x in jax.tree.leaves(params))] = (g, extra)
    if not g.uncovered:
      return ()
    try:
      return fallback.init([x for x, pos in zip(jax.tree.leaves(params), g.positions, strict=True)
                            if pos is None])
    except (ValueError, TypeError) as e:
      raise ValueError(f"nino: fallback {fallback.name!r} cannot predict the parameters outside the graph "
                       f"({', '.join(g.uncovered)}), which it is given as a list of arrays without their "
                       f"names: {e} Use a predictor that works on each array alone, such as "
                       "predictors.linefit_plus().") from e

  def run_parts(sub: graphs_lib.SubGraphs, full_types: np.ndarray, feat: np.ndarray, x: jax.Array,
                k, w: Any) -> jax.Array:
    """The graph network on each part in turn (``lax.map``); ``(E, slots)`` deltas of the whole graph."""
    def one(part):
      edges, real, snd, rcv, types, nodes = part
      gt = GraphsTuple(nodes=nodes, edges={"x": x[edges] * real[:, None].astype(x.dtype), "type": types},
                       senders=snd, receivers=rcv, n_node=jnp.asarray([sub.num_nodes]),
                       n_edge=jnp.asarray([edges.shape[0]]), globals=None)
      return gnn(w, gt, k)

    types = np.where(sub.real_mask, full_types[sub.edges], 0).astype(np.int32)
    parts = jax.lax.optimization_barrier(
        tuple(jnp.asarray(a) for a in (sub.edges, sub.real_mask, sub.senders, sub.receivers, types, feat)))
    deltas = jax.lax.map(one, parts)  # (P, E_max, slots)
    out = jnp.zeros((x.shape[0], deltas.shape[-1]), deltas.dtype)
    pi, ei = np.nonzero(sub.param_mask)
    return out.at[sub.edges[pi, ei]].set(deltas[pi, ei])

  def predict(history, times, k, state):
    # NiNo assumes states at a regular interval; times only reach the fallback
    leaves, treedef = jax.tree.flatten(history)
    key = tuple(np.shape(x)[1:] for x in leaves)
    if key not in cache:
      raise ValueError("nino: predict got a history whose parameters init never saw; call tx.init(params) "
                       "with the same params structure.")
    g, (sub, feat) = cache[key]
    if leaves[0].shape[0] != ctx:
      raise ValueError(f"nino: the model takes ctx={ctx} states, the history has {leaves[0].shape[0]}; "
                       f"use nowcast(..., ctx={ctx}).")
    inside = [pos is not None for pos in g.positions]  # False: a leaf the fallback predicts
    in_graph = [h for h, i in zip(leaves, inside, strict=True) if i]
    scaled, mu, sigma = scale_history(in_graph)
    it = iter(scaled)
    x = g.gather([next(it) if i else h for h, i in zip(leaves, inside, strict=True)],  # gather skips them
                 width=None if fused else model.slots * ctx)
    n_slots = x.shape[1] // ctx
    # The weights and the graph are constants of the compiled step; behind an optimization barrier, XLA
    # does not constant-fold what depends on them alone (the edge-type embedding, the node projections:
    # (E, hidden) arrays baked into the executable, and minutes of compile time on GPU for a large graph).
    w = jax.lax.optimization_barrier(weights)
    if sub is None:
      delta = gnn(w, jax.lax.optimization_barrier(make_graphs_tuple(g, x, feat)), k)  # (E, slots)
    else:
      delta = run_parts(sub, g.edge_type, feat, x, k, w)
    last = x.reshape(g.num_edges, n_slots, ctx)[:, :, -1]
    delta = delta[:, :n_slots]
    pred_scaled = [p for p in g.scatter(last + delta) if p is not None]
    ours = iter([(p * s + m).astype(h.dtype) for p, s, m, h in zip(pred_scaled, sigma, mu, in_graph,
                                                                       strict=True)])
    theirs = iter(())
    if g.uncovered:
      k_fb = k if fallback_horizon is None else jnp.minimum(k, fallback_horizon)
      other, state = fallback.predict([h for h, i in zip(leaves, inside, strict=True) if not i], times,
                                      k_fb, state)
      theirs = iter(other)
    return jax.tree.unflatten(treedef, [next(ours) if i else next(theirs) for i in inside]), state

  return Predictor(init=init, predict=full_precision(predict), name="nino", min_ctx=ctx)


__all__ = ["NiNoGNN", "fuse_weights", "fused_apply", "load_official_weights", "make_graphs_tuple", "nino",
           "nino_template", "scale_history"]
