"""Neural graphs read from a model's forward pass (its jaxpr), for any Flax Linen or NNX model.

:func:`optax_nowcast.graphs.neural_graph` reads a graph from parameter *names*, which works for plain
Dense/Conv stacks and GPT-style transformers. :func:`trace_graph` instead traces ``apply_fn(params, *args)``
once with ``jax.make_jaxpr`` and follows the data: every element of every intermediate array is labelled
with the neuron (graph node) it belongs to, or none, and each primitive maps its inputs' labels to its
outputs'. So creation order, module names, ``nn.scan`` stacks, residual connections and normalisation
layers need no special casing. The rules (NiNo's construction where the paper or its code defines one,
ours otherwise, marked *ours*):

* **Inputs**: each float input gets one node per index of its last axis (features, or image channels);
  integer inputs (token ids) carry no node.
* **Dense / DenseGeneral / Einsum** (``dot_general`` of an activation with a parameter): one new node per
  output feature and one edge per kernel element, from the node of its input feature to the node of its
  output feature. A ``Dense`` after a spatial flatten wires each input unit to its channel's node (parallel
  edges), as :func:`~optax_nowcast.graphs.neural_graph` does.
* **Conv** (``conv_general_dilated``): one edge per (input channel, output channel) carrying the kernel's
  spatial values in its slots (up to 3x3); grouped and depthwise convolutions wire each output channel to
  its group's inputs. *Ours*: a kernel larger than 3x3 (a ViT patch embedding, ResNet's 7x7 stem) spreads
  its values over parallel edges of 9 slots each.
* **Bias, normalisation scale and shift** (a parameter added to or multiplied with an activation; BatchNorm,
  LayerNorm, GroupNorm, RMSNorm alike): one node per tensor with one edge to each channel it acts on, of
  type bias (added) or norm weight (multiplied). A parameter that acts on each channel several times
  (a position embedding ``(T, d)``, a per-position bias) gets one node per position instead (type position
  embedding when added). *Ours*: a parameter concatenated to an activation (ViT's class token) is a bias
  on the channels it joins.
* **Embeddings** (``jnp.take`` of a parameter ``(V, d)``): one node per token (its ``pos_w`` = id + 1) and
  one edge per element, to ``d`` new stream nodes (NiNo's word-embedding edges).
* **Residual connections**: where two activations of different nodes meet elementwise (``x + f(x)``, and,
  *ours*, gating products ``a * b``), the result takes the newer nodes and residual edges join the older
  to the newer ones, NiNo's residual edges of transformers.
* **Attention**: a product of two activations that contracts neurons on both sides (``q . k``) makes the
  key kernel's output neurons the query's (NiNo: key edges are reversed, they run from the query neurons
  to the stream), and one head node per head, wired to the query neurons and, at ``softmax(q . k) . v``,
  to the value neurons (NiNo's head edges). Edge types attention q/k/v follow.
* **Reductions** keep a node where all reduced elements share it (pooling over space keeps channels;
  LayerNorm's statistics over channels carry no node). Reshapes, transposes, slices, concatenations and
  broadcasts move labels with the data.
* ``scan`` (``nn.scan``, ``nnx.scan`` stacks) is unrolled, each iteration reading its slice of the stacked
  parameters; ``jit``, ``custom_jvp``/``custom_vjp`` and ``remat`` are traced through.

A parameter element gets the edge of its first use (a tied output embedding keeps its input edges). A
parameter used in any other way (an argument of an unknown primitive, a reduction, two parameters
multiplied) is *not covered*; :func:`trace_graph` raises naming it, or with ``allow_partial=True`` leaves
it out of the graph (``graph.uncovered``) for :func:`optax_nowcast.predictors.nino`'s ``fallback``.

Pass a batch of one as the example input: labels are host arrays of every intermediate's shape.

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> class Net(nn.Module):  # layers created out of data-flow order
...   @nn.compact
...   def __call__(self, x):
...     return nn.Dense(3)(nn.relu(nn.LayerNorm()(nn.Dense(5)(x))))
>>> net = Net()
>>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
>>> g = trace_graph(net.apply, params, jnp.zeros((1, 4)))
>>> g.num_nodes  # 4 + 5 + 3 neurons and a node per bias, scale and shift
16
>>> g.num_edges  # 4*5 + 5*3 weights, 5 + 5 + 5 + 3 bias/scale/shift edges, 16 self-loops
69
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import extend as jex

from optax_nowcast import graphs as g_lib

NONE = -1
_IDENTITY = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier",
             "stop_gradient", "pvary", "sharding_constraint", "mesh_cast", "reshard"}
_STRUCTURAL = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev",
               "concatenate", "pad", "split", "select_n"}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
           "reduce_or", "reduce_xor"}
_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}
_ADD = {"add", "sub", "add_any"}
_MUL = {"mul", "div"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass
class Act:
  """An activation or constant: the node of each element (``NONE`` where it has none), and the value
  when it does not depend on the inputs or the parameters (positions from ``iota``, masks)."""
  nodes: np.ndarray
  value: np.ndarray | None = None


@dataclasses.dataclass
class PView:
  """A view of parameter leaf ``leaf``: the leaf's flat element index at each element (``NONE`` = pad)."""
  leaf: int
  idx: np.ndarray


class _Graph:
  """Nodes (with a union-find for the attention merge), parameter edge blocks and auxiliary edges."""

  def __init__(self, leaf_shapes: list[tuple[int, ...]]):
    self.parent: list[int] = []
    self.pos_w: dict[int, int] = {}
    self.heads: set[int] = set()
    self.sources: dict[int, np.ndarray] = {}  # source node of a bias/norm/position edge -> its receivers
    self.leaf_shapes = leaf_shapes
    # edge blocks in order of creation: ("param", leaf, elements, their edges, their slots, senders,
    # receivers, type) or ("aux", name, senders, receivers, type, const)
    self.seq: list[tuple] = []
    self.covered: dict[int, np.ndarray] = {}  # leaf -> flat mask of the elements given an edge
    self.unsupported: dict[int, str] = {}
    self.uses_conv = False
    self.k_nodes: set[int] = set()  # nodes merged into query neurons (their edges are reversed)
    self.q_nodes: set[int] = set()
    self.v_nodes: set[int] = set()

  def new(self, shape) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    start = len(self.parent)
    self.parent.extend(range(start, start + n))
    return np.arange(start, start + n, dtype=np.int32).reshape(shape)

  def find(self, a: int) -> int:
    while self.parent[a] != a:
      self.parent[a] = self.parent[self.parent[a]]
      a = self.parent[a]
    return a

  def union(self, child: int, root: int):
    self.parent[self.find(child)] = self.find(root)

  def param_block(self, leaf: int, elem_idx: np.ndarray, snd: np.ndarray, rcv: np.ndarray,
                  slot: np.ndarray, etype: int, edge_of: np.ndarray | None = None):
    """Edges for the elements ``elem_idx`` of ``leaf``: ``edge_of`` gives each element's edge (elements
    sharing one share the edge, e.g. a conv kernel's 9 spatial values; default: one edge per element),
    renumbered in the order of their first element. An element already given an edge keeps it (a tied
    output embedding); a stacked (``nn.scan``) leaf gets one block per layer."""
    size = int(np.prod(self.leaf_shapes[leaf], dtype=np.int64))
    mask = self.covered.setdefault(leaf, np.zeros(size, bool))
    elem_idx, snd, rcv, slot = (np.asarray(a).reshape(-1) for a in (elem_idx, snd, rcv, slot))
    edge_of = np.arange(elem_idx.size) if edge_of is None else np.asarray(edge_of).reshape(-1)
    keep = elem_idx >= 0
    keep[keep] = ~mask[elem_idx[keep]]
    if not keep.any():
      return
    elem_idx, snd, rcv, slot, edge_of = elem_idx[keep], snd[keep], rcv[keep], slot[keep], edge_of[keep]
    if np.bincount(elem_idx, minlength=size).max() > 1:
      self.unsupported[leaf] = "some elements act on several neurons"
      return
    mask[elem_idx] = True
    if np.all(edge_of[1:] >= edge_of[:-1]):  # already in order of first element (dense, conv): O(n)
      edge = np.cumsum(np.r_[True, edge_of[1:] != edge_of[:-1]]) - 1
    else:
      _, first, edge = np.unique(edge_of, return_index=True, return_inverse=True)
      rank = np.empty_like(first)
      rank[np.argsort(first)] = np.arange(len(first))
      edge = rank[edge.reshape(-1)]
    n_edges = int(edge.max()) + 1
    snd_e = np.zeros(n_edges, np.int64)
    rcv_e = np.zeros(n_edges, np.int64)
    snd_e[edge], rcv_e[edge] = snd, rcv
    self.seq.append(("param", leaf, elem_idx, edge, slot, snd_e, rcv_e, etype))

  def head_ids(self) -> np.ndarray:
    return np.array(sorted(self.heads), np.int64)

  def is_covered(self, p: PView) -> bool:
    m = self.covered.get(p.leaf)
    return m is not None and bool(m[p.idx[p.idx >= 0]].all())

  def edge_aux(self, name: str, pairs: np.ndarray, etype: int, const: float = 1.0):
    if len(pairs):
      self.seq.append(("aux", name, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), etype, const))


def _concrete_int(shape, value=NONE):
  return np.full(shape, value, np.int32)


def _unique_along(nodes: np.ndarray, keep_axes: tuple[int, ...]) -> np.ndarray:
  """Per index of ``keep_axes``: the node shared by all elements there, else ``NONE``."""
  other = tuple(a for a in range(nodes.ndim) if a not in keep_axes)
  if not other:
    return np.transpose(nodes, keep_axes)
  hi = nodes.max(axis=other)
  lo = nodes.min(axis=other)
  out = np.where(hi == lo, hi, NONE)
  # nodes.max keeps the remaining axes in increasing order; put them in keep_axes' order
  rem = sorted(keep_axes)
  return np.transpose(out, [rem.index(a) for a in keep_axes])


def _bind(eqn, *vals):
  """Applies a structural primitive to int32 label arrays (on the host)."""
  params = dict(eqn.params)
  out = eqn.primitive.bind(*[jnp.asarray(v) for v in vals], **params)
  if eqn.primitive.multiple_results:
    return [np.asarray(o) for o in out]
  return np.asarray(out)


class _Tracer:
  def __init__(self, graph: _Graph):
    self.g = graph

  # ----------------------------------------------------------------------------------------- helpers
  def act(self, v, shape) -> np.ndarray:
    """Node labels of ``v`` (a parameter view used as data loses its parameter and is marked)."""
    if isinstance(v, PView):
      self.mark(v, "used as data by an operation that neural graphs do not model")
      return _concrete_int(shape)
    return np.broadcast_to(v.nodes, shape) if v.nodes.shape != tuple(shape) else v.nodes

  def mark(self, v, why: str):
    if isinstance(v, PView) and not self.g.is_covered(v):
      self.g.unsupported.setdefault(v.leaf, why)

  def merge(self, arrays: list[np.ndarray], name: str) -> np.ndarray:
    """Elementwise meeting of activations: where two differ, the newer node wins, with residual edges
    from the older (a head label meeting a neuron yields the neuron, without an edge)."""
    out = arrays[0]
    for a in arrays[1:]:
      both = (out >= 0) & (a >= 0) & (out != a)
      res = np.where(out >= 0, out, a)
      if both.any():
        pairs, inv = np.unique(np.stack([out[both], a[both]], 1), axis=0, return_inverse=True)
        find = np.vectorize(self.g.find, otypes=[np.int64])
        r0, r1 = find(pairs[:, 0]), find(pairs[:, 1])
        heads = self.g.head_ids()
        h0, h1 = np.isin(r0, heads), np.isin(r1, heads)
        new = np.where(h0 & ~h1, r1, np.where(h1 & ~h0, r0, np.maximum(r0, r1)))
        old = np.where(new == r1, r0, r1)
        edge = (old != new) & ~h0 & ~h1
        self.g.edge_aux(f"{name}.res", np.unique(np.stack([old[edge], new[edge]], 1), axis=0), g_lib.RESIDUAL)
        res = res.copy()
        res[both] = new[inv.reshape(-1)]
      out = res
    return out

  def param_on_act(self, p: PView, a: np.ndarray, etype_one: int, etype_rows: int) -> np.ndarray | None:
    """A parameter added to / multiplied with an activation: edges to the nodes it acts on."""
    if self.g.is_covered(p):
      return a
    idx = np.broadcast_to(p.idx, a.shape).reshape(-1)
    nodes = a.reshape(-1)
    m = idx >= 0
    span = np.int64(len(self.g.parent) + 1)  # (element, node) pairs as one int64 (1-D unique is fast)
    code = np.unique(idx[m].astype(np.int64) * span + (nodes[m].astype(np.int64) + 1))
    pairs = np.stack([code // span, code % span - 1], 1)
    if len(pairs) == 0 or (pairs[:, 1] < 0).any() or len(np.unique(pairs[:, 0])) != len(pairs):
      return None  # an element acts on no node, or on several
    elem, rcv = pairs[:, 0], pairs[:, 1]
    # rank of each element among the elements acting on the same node -> its source node (row)
    order = np.lexsort((elem, rcv))
    rank = np.zeros(len(elem), np.int64)
    srt = rcv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(srt)) + 1]
    run = np.arange(len(srt)) - np.repeat(starts, np.diff(np.r_[starts, len(srt)]))
    rank[order] = run
    rows = int(rank.max()) + 1
    src = self.g.new((rows,))
    for r in range(rows):
      self.g.sources[int(src[r])] = rcv[rank == r]
    etype = etype_one if rows == 1 else etype_rows
    self.g.param_block(p.leaf, elem, src[rank], rcv, np.zeros_like(elem), etype)
    return a

  # ------------------------------------------------------------------------------------------- eqns
  def run(self, jaxpr, consts: list[Any], args: list[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v):
      if isinstance(v, jex.core.Literal):
        return Act(_concrete_int(np.shape(v.val)), np.asarray(v.val))
      return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
      env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.fold(eqn, ins)
      if outs is None:
        outs = self.eqn(eqn, ins)
      for v, o in zip(eqn.outvars, outs, strict=True):
        env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def fold(self, eqn, ins: list[Any]) -> list[Any] | None:
    """Evaluates an equation whose inputs are all known values (constant folding), else ``None``."""
    if not all(isinstance(v, Act) and v.value is not None for v in ins) or \
        eqn.primitive.name == "scan" or any(k in eqn.params for k in _CALLS):
      return None
    try:
      out = eqn.primitive.bind(*[jnp.asarray(v.value) for v in ins], **eqn.params)
    except Exception:  # noqa: BLE001 -- not evaluable here: trace it symbolically instead
      return None
    out = out if eqn.primitive.multiple_results else [out]
    return [Act(_concrete_int(np.shape(o)), np.asarray(o)) for o in out]

  def eqn(self, eqn, ins: list[Any]) -> list[Any]:
    name = eqn.primitive.name
    shapes = [tuple(v.aval.shape) for v in eqn.outvars]
    none = [Act(_concrete_int(s)) for s in shapes]
    if name in _IDENTITY:
      return [ins[0]]
    if name == "scan":
      return self.scan(eqn, ins)
    sub = next((eqn.params[k] for k in _CALLS if k in eqn.params), None)
    if sub is not None and name not in ("while", "cond"):
      closed = sub if hasattr(sub, "consts") else None
      jaxpr = closed.jaxpr if closed is not None else sub
      consts = [Act(_concrete_int(np.shape(c)), np.asarray(c)) for c in getattr(closed, "consts", [])]
      n = len(jaxpr.invars)
      return self.run(jaxpr, consts, ins[len(ins) - n:])
    if name == "dot_general":
      return [self.dot(eqn, ins)]
    if name == "conv_general_dilated":
      return [self.conv(eqn, ins)]
    if name == "gather":
      return [self.gather(eqn, ins)]
    if name == "concatenate" and any(isinstance(v, PView) for v in ins):
      return [self.concat_param(eqn, ins)]
    params = [v for v in ins if isinstance(v, PView)]
    acts = [v for v in ins if isinstance(v, Act)]
    if name in _STRUCTURAL:
      if params and name != "select_n" and len({p.leaf for p in params}) == 1 and \
          all(np.all(a.nodes < 0) for a in acts):  # a view of one parameter: move its element indices
        out = _bind(eqn, *[v.idx if isinstance(v, PView) else v.nodes for v in ins])
        return [PView(params[0].leaf, o) for o in (out if isinstance(out, list) else [out])]
      for p in params:
        self.mark(p, f"used by {name} together with data")
      if name == "select_n":  # elementwise on the cases; the predicate only chooses
        return [Act(self.merge([self.act(v, shapes[0]) for v in ins[1:]], name))]
      out = _bind(eqn, *[self.act(v, v.nodes.shape if isinstance(v, Act) else v.idx.shape) for v in ins])
      return [Act(o) for o in (out if isinstance(out, list) else [out])]
    if name in _ADD | _MUL and not params:
      return [Act(self.merge([self.act(v, shapes[0]) for v in ins], name))]
    if name in _ADD | _MUL and len(params) == 1 and len(ins) == 2:
      p = params[0]
      other = ins[1] if ins[0] is p else ins[0]
      a = np.broadcast_to(other.nodes, shapes[0])
      if np.all(a < 0):  # a parameter shifted or scaled by data without nodes: still that parameter
        return [PView(p.leaf, np.broadcast_to(p.idx, shapes[0]))]
      if name in ("sub", "div") and ins[0] is p:
        self.mark(p, f"{name} with the parameter as the first operand")
        return [Act(a)]
      kind = (g_lib.BIAS, g_lib.POS_EMB) if name in _ADD else (g_lib.NORM_W, g_lib.NORM_W)
      out = self.param_on_act(p, a, *kind)
      if out is None:
        self.mark(p, f"{name}: its elements do not each act on one neuron")
        return [Act(a)]
      return [Act(out)]
    if name in _REDUCE:
      for p in params:
        self.mark(p, f"reduced by {name}")
      a = self.act(ins[0], np.shape(ins[0].nodes) if isinstance(ins[0], Act) else ins[0].idx.shape)
      axes = tuple(eqn.params["axes"])
      keep = tuple(i for i in range(a.ndim) if i not in axes)
      return [Act(_unique_along(a, keep).reshape(shapes[0]))]
    if name in _WINDOW:
      for p in params:
        self.mark(p, f"used by {name}")
      a = self.act(ins[0], np.shape(ins[0].nodes) if isinstance(ins[0], Act) else ins[0].idx.shape)
      kw = {k: eqn.params[k] for k in ("window_dimensions", "window_strides", "padding", "base_dilation",
                                       "window_dilation")}
      big = np.iinfo(np.int32)
      hi = np.asarray(jax.lax.reduce_window(jnp.asarray(a), np.int32(big.min), jax.lax.max, **kw))
      lo = np.asarray(jax.lax.reduce_window(jnp.asarray(a), np.int32(big.max), jax.lax.min, **kw))
      return [Act(np.where(hi == lo, hi, NONE).astype(np.int32))]
    for p in params:
      self.mark(p, f"used by {name}")
    if not params and len(acts) >= 1 and all(s == np.shape(ins[0].nodes) for s in shapes) and \
        all(np.shape(v.nodes) in (shapes[0], ()) for v in acts):
      # an elementwise primitive (exp, tanh, erf, logistic, integer_pow, max, comparisons, ...)
      return [Act(self.merge([self.act(v, shapes[0]) for v in ins], name)) for _ in shapes]
    if len(acts) == 1 and len(shapes) == 1 and acts[0].nodes.ndim and len(shapes[0]) and \
        acts[0].nodes.shape[-1] == shapes[0][-1]:  # unknown, but the feature axis is kept
      feat = _unique_along(acts[0].nodes, (acts[0].nodes.ndim - 1,))
      return [Act(np.broadcast_to(feat, shapes[0]).astype(np.int32))]
    return none

  def scan(self, eqn, ins):
    p = eqn.params
    body = p["jaxpr"]
    nc, ncar = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]
    body_consts = [Act(_concrete_int(np.shape(c)), np.asarray(c)) for c in body.consts]
    ys_steps = []
    steps = range(p["length"])
    for i in (reversed(steps) if p["reverse"] else steps):
      x_i = [PView(x.leaf, x.idx[i]) if isinstance(x, PView) else Act(x.nodes[i]) for x in xs]
      out = self.run(body.jaxpr, body_consts, list(consts) + list(carry) + x_i)
      carry, ys = out[:ncar], out[ncar:]
      ys_steps.append([self.act(y, np.shape(y.nodes) if isinstance(y, Act) else y.idx.shape) for y in ys])
    if p["reverse"]:
      ys_steps = ys_steps[::-1]
    ys = [Act(np.stack([s[j] for s in ys_steps])) for j in range(len(eqn.outvars) - ncar)]
    return list(carry) + ys

  def dot(self, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if isinstance(lhs, PView) and isinstance(rhs, PView):
      self.mark(lhs, "multiplied with another parameter")
      self.mark(rhs, "multiplied with another parameter")
      return Act(_concrete_int(out_shape))
    if isinstance(lhs, PView) or isinstance(rhs, PView):
      param_is_lhs = isinstance(lhs, PView)
      p, a = (lhs, rhs) if param_is_lhs else (rhs, lhs)
      pc, ac = (lc, rc) if param_is_lhs else (rc, lc)
      pb, ab = (lb, rb) if param_is_lhs else (rb, lb)
      if pb or ab:
        self.mark(p, "in a batched product (vmapped parameters are not modelled)")
        return Act(_concrete_int(out_shape))
      if self.g.is_covered(p):  # a second use (a tied output embedding): no new neurons
        return Act(_concrete_int(out_shape))
      pfree = tuple(i for i in range(p.idx.ndim) if i not in pc)
      afree = tuple(i for i in range(a.nodes.ndim) if i not in ac)
      inp = _unique_along(a.nodes, tuple(ac))  # (contracted shape), the activation's order
      if np.all(inp < 0):
        inp = self.g.new(inp.shape)  # data without nodes (a model input) gets input nodes
      elif (inp < 0).any():
        self.mark(p, "reads input features that belong to no single neuron")
        return Act(_concrete_int(out_shape))
      out_nodes = self.g.new(tuple(p.idx.shape[i] for i in pfree))
      # per parameter element: sender = input node at its contracted index, receiver = output node
      idx_t = np.transpose(p.idx, tuple(pc) + pfree)  # (contracted..., free...)
      csh = tuple(p.idx.shape[i] for i in pc)
      snd = np.broadcast_to(inp.reshape(csh + (1,) * len(pfree)), idx_t.shape)
      rcv = np.broadcast_to(out_nodes.reshape((1,) * len(pc) + out_nodes.shape), idx_t.shape)
      self.g.param_block(p.leaf, idx_t, snd, rcv, np.zeros(idx_t.shape, np.int64), g_lib.DENSE)
      # output layout: lhs free dims then rhs free dims
      a_part = np.zeros([a.nodes.shape[i] for i in afree], np.int32)
      if param_is_lhs:
        res = out_nodes.reshape(out_nodes.shape + (1,) * a_part.ndim) + a_part
      else:
        res = a_part.reshape(a_part.shape + (1,) * out_nodes.ndim) + out_nodes
      return Act(res.reshape(out_shape).astype(np.int32))
    return self.dot_acts(eqn, lhs.nodes, rhs.nodes, (lc, rc), (lb, rb), out_shape)

  def dot_acts(self, eqn, L, R, contract, batch, out_shape):
    """A product of two activations: attention's ``q . k`` and ``softmax(q . k) . v``."""
    (lc, rc), (lb, rb) = contract, batch
    lfree = tuple(i for i in range(L.ndim) if i not in lc and i not in lb)
    rfree = tuple(i for i in range(R.ndim) if i not in rc and i not in rb)
    nb = len(lb)
    # each side as (batch..., free..., contracted-flattened)
    lt = np.transpose(L, tuple(lb) + lfree + tuple(lc)).reshape(
        tuple(L.shape[i] for i in tuple(lb) + lfree) + (-1,))
    rt = np.transpose(R, tuple(rb) + rfree + tuple(rc)).reshape(
        tuple(R.shape[i] for i in tuple(rb) + rfree) + (-1,))
    # a side contracts neurons if, per batch and contracted index, one node runs along its free axes
    heads = self.g.head_ids()

    def neurons(X, keep):
      u = _unique_along(X, keep)
      return bool((u >= 0).any() and not np.isin(u[u >= 0], heads).all())

    l_neurons = bool(lc) and neurons(L, tuple(lb) + tuple(lc))
    r_neurons = bool(rc) and neurons(R, tuple(rb) + tuple(rc))
    if l_neurons and r_neurons:  # q . k: the key neurons become the query neurons
      qn = np.moveaxis(lt, -1, nb)[(Ellipsis,) + (0,) * len(lfree)]  # (batch..., contracted)
      kn = np.moveaxis(rt, -1, nb)[(Ellipsis,) + (0,) * len(rfree)]
      for q, k in np.unique(np.stack([qn.reshape(-1), kn.reshape(-1)], 1), axis=0).tolist():
        if q >= 0 and k >= 0 and self.g.find(k) != self.g.find(q):
          self.g.k_nodes.add(k)
          self.g.q_nodes.add(q)
          self.g.union(k, q)
      bshape = qn.shape[:nb]
      varying = tuple(n if np.any(qn != np.take(qn, [0], axis=i)) else 1 for i, n in enumerate(bshape))
      hb = np.broadcast_to(self.g.new(varying), bshape)
      self.g.heads.update(np.unique(hb).tolist())
      pairs = np.stack([np.broadcast_to(hb.reshape(bshape + (1,)), qn.shape).reshape(-1), qn.reshape(-1)], 1)
      self.g.edge_aux("head.q", np.unique(pairs[pairs[:, 1] >= 0], axis=0), g_lib.HEAD)
      res = hb.reshape(bshape + (1,) * (len(lfree) + len(rfree)))
      return Act(np.broadcast_to(res, out_shape).astype(np.int32))
    left = np.full(lt.shape[:-1], NONE, np.int32) if l_neurons else lt[..., 0]
    right = np.full(rt.shape[:-1], NONE, np.int32) if r_neurons else rt[..., 0]
    lo = left.reshape(left.shape + (1,) * len(rfree))
    ro = right.reshape(right.shape[:nb] + (1,) * len(lfree) + right.shape[nb:])
    lo, ro = (np.array(x) for x in np.broadcast_arrays(lo, ro))
    for hs, ns in ((lo, ro), (ro, lo)):  # softmax(q . k) . v: value neurons, wired to their heads
      at = np.isin(hs, heads) & (ns >= 0) & ~np.isin(ns, heads)
      if at.any():
        pairs = np.unique(np.stack([hs[at], ns[at]], 1), axis=0)
        self.g.v_nodes.update(pairs[:, 1].tolist())
        self.g.edge_aux("head.v", pairs, g_lib.HEAD)
        hs[at] = NONE
    return Act(self.merge([lo.astype(np.int32), ro.astype(np.int32)], "dot").reshape(out_shape))

  def conv(self, eqn, ins):
    lhs, rhs = ins
    out_shape = tuple(eqn.outvars[0].aval.shape)
    dn = eqn.params["dimension_numbers"]
    if not isinstance(rhs, PView) or isinstance(lhs, PView) or eqn.params["batch_group_count"] != 1:
      self.mark(lhs, "a convolution input")
      self.mark(rhs, "a convolution of this form")
      return Act(_concrete_int(out_shape))
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    cin = _unique_along(lhs.nodes, (lhs_spec[1],))
    if np.all(cin < 0):
      cin = self.g.new(cin.shape)
    elif (cin < 0).any():
      self.mark(rhs, "reads input channels that belong to no single neuron")
      return Act(_concrete_int(out_shape))
    k = np.transpose(rhs.idx, (rhs_spec[1], rhs_spec[0]) + tuple(rhs_spec[2:]))  # (I, O, *spatial)
    i_n, o_n = k.shape[:2]
    ks = int(np.prod(k.shape[2:], dtype=np.int64))
    groups = eqn.params["feature_group_count"]
    out_nodes = self.g.new((o_n,))
    shape3 = (i_n, o_n, ks)
    i = np.broadcast_to(np.arange(i_n)[:, None, None], shape3)
    o = np.broadcast_to(np.arange(o_n)[None, :, None], shape3)
    s = np.broadcast_to(np.arange(ks)[None, None, :], shape3)
    in_ch = (o // (o_n // groups)) * (len(cin) // groups) + i
    if ks > 1:
      self.g.uses_conv = True
    # one edge per (input, output channel) and 9 kernel values: input-major, as a dense layer's edges
    self.g.param_block(rhs.leaf, k.reshape(shape3), cin[in_ch], out_nodes[o], s % g_lib.MAX_SLOTS, g_lib.CONV,
                       edge_of=(i * o_n + o) * -(-ks // g_lib.MAX_SLOTS) + s // g_lib.MAX_SLOTS)
    shape = [1] * len(out_shape)
    shape[out_spec[1]] = o_n
    return Act(np.broadcast_to(out_nodes.reshape(shape), out_shape).astype(np.int32))

  def gather(self, eqn, ins):
    operand, indices = ins
    out_shape = tuple(eqn.outvars[0].aval.shape)
    dn = eqn.params["dimension_numbers"]
    if isinstance(operand, PView) and indices.value is not None:  # known rows: a view of the parameter
      params = dict(eqn.params, fill_value=NONE)
      idx = eqn.primitive.bind(jnp.asarray(operand.idx), jnp.asarray(indices.value), **params)
      return PView(operand.leaf, np.asarray(idx))
    if isinstance(operand, PView):
      if operand.idx.ndim == 2 and tuple(dn.collapsed_slice_dims) == (0,) and \
          tuple(eqn.params["slice_sizes"]) == (1, operand.idx.shape[1]) and not dn.operand_batching_dims:
        v, d = operand.idx.shape
        tok = self.g.new((v,))
        for t, node in enumerate(tok.tolist()):
          self.g.pos_w[node] = t + 1
        stream = self.g.new((d,))
        self.g.param_block(operand.leaf, operand.idx, np.broadcast_to(tok[:, None], (v, d)),
                           np.broadcast_to(stream[None, :], (v, d)), np.zeros((v, d), np.int64),
                           g_lib.WORD_EMB)
        return Act(np.broadcast_to(stream, out_shape).astype(np.int32))
      self.mark(operand, "gathered in a way other than an embedding lookup")
      return Act(_concrete_int(out_shape))
    a = operand.nodes
    if a.ndim and out_shape and a.shape[-1] == out_shape[-1] and a.ndim - 1 not in dn.collapsed_slice_dims:
      feat = _unique_along(a, (a.ndim - 1,))
      return Act(np.broadcast_to(feat, out_shape).astype(np.int32))
    return Act(_concrete_int(out_shape))

  def concat_param(self, eqn, ins):
    """``concatenate`` with a parameter part (a class token): a bias on the channels it joins."""
    out_shape = tuple(eqn.outvars[0].aval.shape)
    axis = eqn.params["dimension"]
    acts = [v for v in ins if isinstance(v, Act) and (v.nodes >= 0).any()]
    if not acts or axis == len(out_shape) - 1:
      for v in ins:
        self.mark(v, "concatenated along the feature axis or to data without neurons")
      return Act(_concrete_int(out_shape))
    feat = _unique_along(acts[0].nodes, (acts[0].nodes.ndim - 1,))
    parts = []
    for v in ins:
      if isinstance(v, PView):
        a = np.broadcast_to(feat, v.idx.shape).astype(np.int32)
        if self.param_on_act(v, a, g_lib.BIAS, g_lib.POS_EMB) is None:
          self.mark(v, "concatenated with elements that do not each join one neuron")
        parts.append(a)
      else:
        parts.append(v.nodes)
    return Act(np.concatenate(parts, axis=axis).astype(np.int32))


def forward_args(who: str, apply_fn: Callable[..., Any] | None, example_input: Any) -> tuple[Any, ...] | None:
  """The positional inputs a predictor ``who`` traces ``apply_fn`` with: ``example_input`` as a tuple (one
  input or several), or ``None`` without ``apply_fn`` (the graph is then read from the parameter names).
  Raises a ``ValueError`` naming ``who`` when only one of the two is given."""
  if (apply_fn is None) != (example_input is None):
    raise ValueError(f"{who}: pass apply_fn and example_input together (the graph is traced from "
                     "apply_fn(params, *example_input)), or neither (the graph is read from the names).")
  if apply_fn is None:
    return None
  return example_input if isinstance(example_input, tuple) else (example_input,)


def trace_graph(apply_fn: Callable[..., Any], params: Any, *args: Any, allow_partial: bool = False,
                **kwargs: Any) -> g_lib.NeuralGraph:
  """The neural graph of ``params`` read from ``apply_fn(params, *args, **kwargs)`` (see the module doc).

  Args:
    apply_fn: the model's forward, e.g. Linen's ``model.apply`` (with ``{"params": ...}`` as its first
      argument; close over ``batch_stats`` and pass ``train=False``), or :func:`nnx_apply` of an NNX model.
    params: the parameters, in the structure the optimizer sees.
    *args: an example input, a batch of one (labels are host arrays of every intermediate).
    **kwargs: keyword arguments of ``apply_fn`` (e.g. ``train=False``).
    allow_partial: leave parameters the graph cannot express out of it (``graph.uncovered``) instead of
      raising.

  Raises:
    ValueError: naming each float parameter the graph cannot express and how it is used.
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [x for _, x in leaves_with_path]
  paths = [g_lib.path_str(p) for p, _ in leaves_with_path]
  shapes = [tuple(np.shape(x)) for x in leaves]

  def fn(leaves_, args_, kwargs_):
    return apply_fn(jax.tree.unflatten(treedef, leaves_), *args_, **kwargs_)

  closed = jax.make_jaxpr(fn)(leaves, args, kwargs)
  g = _Graph(shapes)
  tr = _Tracer(g)
  inputs = []
  for i, x in enumerate(jax.tree.leaves((leaves, args, kwargs))):
    shape = tuple(np.shape(x))
    if i < len(leaves):
      inputs.append(PView(i, np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int32).reshape(shape)))
    elif jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and shape:
      feat = g.new((shape[-1],))
      inputs.append(Act(np.broadcast_to(feat, shape).astype(np.int32)))
    else:
      inputs.append(Act(_concrete_int(shape)))
  tr.run(closed.jaxpr, [Act(_concrete_int(np.shape(c)), np.asarray(c)) for c in closed.consts], inputs)
  return _finish(g, leaves, paths, treedef, allow_partial)


def _finish(g: _Graph, leaves, paths, treedef, allow_partial: bool) -> g_lib.NeuralGraph:
  is_float = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) for x in leaves]
  uncovered = {}
  for i in range(len(leaves)):
    m = g.covered.get(i)
    if is_float[i] and (m is None or not m.all() or i in g.unsupported):
      why = g.unsupported.get(i, "not used by the forward pass" if m is None else "only part of it is used")
      uncovered[i] = why
  if uncovered and not allow_partial:
    lines = "; ".join(f"{paths[i]} ({why})" for i, why in uncovered.items())
    raise ValueError(f"the neural graph cannot express {lines}. Pass "
                     "fallback=predictors.linefit_plus() to predictors.nino to predict these with another "
                     "predictor (or allow_partial=True to trace_graph to leave them out).")
  # Node numbering as the official code's: neurons in order of creation, each bias/norm/position node just
  # before the first neuron it feeds; merged (key) neurons dropped.
  roots = np.array([g.find(i) for i in range(len(g.parent))], np.int64)
  keep = np.unique(roots)
  anchor = keep.astype(np.float64)
  for src, rcv in g.sources.items():
    if g.find(src) == src and len(rcv):
      anchor[np.searchsorted(keep, src)] = min(g.find(int(r)) for r in rcv) - 0.5 + src * 1e-9
  remap = np.full(len(g.parent), -1, np.int64)
  remap[keep[np.argsort(anchor, kind="stable")]] = np.arange(len(keep))
  node = remap[roots]
  q_set = {g.find(q) for q in g.q_nodes}
  v_set = {g.find(v) for v in g.v_nodes}
  blocks = []
  elem_pos: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
  for item in g.seq:
    if item[0] == "aux":
      _, name, snd, rcv, etype, const = item
      pairs = np.unique(np.stack([node[snd], node[rcv]], 1), axis=0)
      pairs = pairs[pairs[:, 0] != pairs[:, 1]]
      if len(pairs):
        blocks.append((name, pairs[:, 0], pairs[:, 1], etype, const))
      continue
    _, leaf, elems, edge, slot, snd, rcv, etype = item
    if leaf in uncovered:
      continue
    if etype == g_lib.DENSE:
      recv_roots = {g.find(int(r)) for r in np.unique(rcv)}
      if any(int(r) in g.k_nodes for r in np.unique(rcv)):  # key kernel: query neurons -> stream (NiNo)
        etype, snd, rcv = g_lib.ATTN_K, rcv, snd
      elif recv_roots <= q_set:
        etype = g_lib.ATTN_Q
      elif recv_roots <= v_set:
        etype = g_lib.ATTN_V
    elem_pos.setdefault(leaf, []).append((len(blocks), elems, edge, slot))
    blocks.append((paths[leaf], node[snd], node[rcv], etype, 0.0))
  n = len(keep)
  blocks.append(("self_loop", np.arange(n), np.arange(n), g_lib.SELF_LOOP, 2.0))
  s = g_lib.MAX_SLOTS if g.uses_conv else 1
  starts = np.cumsum([0] + [len(b[1]) for b in blocks])
  positions = []
  for i, x in enumerate(leaves):
    if i not in elem_pos:
      positions.append(None)
      continue
    pos = np.zeros(int(np.prod(np.shape(x), dtype=np.int64)), np.int64)
    for bi, elems, edge, slot in elem_pos[i]:
      pos[elems] = (starts[bi] + edge) * s + slot
    positions.append(pos.reshape(np.shape(x)).astype(np.int32))
  pos_w = np.zeros(n, np.int32)
  for nd, v in g.pos_w.items():
    pos_w[node[nd]] = v
  return g_lib.NeuralGraph(
      num_nodes=n,
      senders=np.concatenate([b[1] for b in blocks]).astype(np.int32),
      receivers=np.concatenate([b[2] for b in blocks]).astype(np.int32),
      edge_type=np.concatenate([np.full(len(b[1]), b[3]) for b in blocks]).astype(np.int32),
      edge_const=np.concatenate([np.full(len(b[1]), b[4], np.float32) for b in blocks]),
      num_slots=s, positions=tuple(positions), pos_w=pos_w, treedef=treedef,
      blocks=tuple((b[0], int(starts[i]), int(starts[i + 1]), b[3]) for i, b in enumerate(blocks)),
      uncovered=tuple(paths[i] for i in uncovered))


def nnx_apply(model: Any, method: str = "__call__", eval_mode: bool = True) -> Callable[..., Any]:
  """``apply(params, *args)`` of an NNX model for :func:`trace_graph`: ``params`` is ``nnx.state(model,
  nnx.Param)``; the other state (BatchNorm statistics, RNG counts) is fixed at its current value, and the
  model runs in eval mode (dropout off, running statistics) unless ``eval_mode=False``."""
  from flax import nnx

  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def apply(params, *args, **kwargs):
    m = nnx.merge(graphdef, params, rest)
    if eval_mode:
      m.eval()
    return getattr(m, method)(*args, **kwargs)

  return apply


__all__ = ["nnx_apply", "trace_graph"]
