"""Neural graphs of Flax parameter trees (NiNo, Knyazev et al. 2025; Lim et al. 2023).

A *neural graph* has one node per neuron (input units, hidden units, outputs), one extra node per 1-D
parameter (bias, LayerNorm scale or shift) and one per attention head, and one edge per weight. The
parameter values over the last ``ctx`` recorded states become edge features; a graph network reads them
and predicts every edge's future value, which is scattered back into the parameter tree.

``neural_graph(params)`` recognises, from the parameter tree alone:

* sequential stacks of ``nn.Dense`` and ``nn.Conv`` (kernels up to 3x3), e.g. MLPs and NiNo's CNNs. After a
  conv, a ``Dense`` whose input size equals the channel count follows a global pooling; one whose input size
  is a multiple of it follows a spatial (NHWC) flatten, and each input unit is wired to its channel's node
  (parallel edges, one per position) -- the official code silently mis-wires that case;
* GPT-style transformers built from ``nn.Embed`` (token, then position), blocks of
  ``LayerNorm -> nn.MultiHeadDotProductAttention -> LayerNorm -> Dense -> Dense`` and a final ``LayerNorm``
  (``optax_nowcast.tasks.GPT``), with NiNo's transformer graph: separate q/k/v edges, k edges reversed,
  one node per head wired to its q and v neurons, residual edges around attention and the MLP, LayerNorm
  nodes on the stream neurons they normalise, token nodes carrying ``pos_w = token_id + 1``.

Edge types (NiNo's 15-row embedding): 1 dense, 2 bias/other 1-D, 3 conv, 4 norm weight, 5 word embedding,
6 position embedding, 7/8/9 attention q/k/v, 10 residual, 11 attention head, 13 self-loop. Node and edge
numbering follow the official code (each 1-D parameter's node just before the neurons it feeds; edges
input-major inside a weight; self-loops last), so the graphs equal the official ones for the FM/16 CNN, an
MLP and GPT-2 (tests check them against the recorded reference graphs).

>>> import jax, jax.numpy as jnp
>>> from optax_nowcast.tasks import CNN
>>> params = CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
>>> g = neural_graph(params)
>>> g.num_nodes, g.num_edges, g.num_slots
(95, 2057, 9)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DENSE, BIAS, CONV, NORM_W, WORD_EMB, POS_EMB, ATTN_Q, ATTN_K, ATTN_V, RESIDUAL, HEAD, SELF_LOOP = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)
NUM_EDGE_TYPES = 15
MAX_SLOTS = 9  # kernels up to 3x3


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralGraph:
  """A static neural graph and the maps between a params tree and edge features (host numpy arrays).

  Attributes:
    num_nodes: N.
    senders, receivers: ``(E,)`` int32; messages go from sender to receiver.
    edge_type: ``(E,)`` int32, NiNo's edge types.
    edge_const: ``(E,)`` float32 constant feature of auxiliary edges (1 residual/head, 2 self-loop), else 0.
    num_slots: S, 9 if the network has a conv kernel larger than 1x1, else 1.
    positions: per params leaf (in ``jax.tree.leaves`` order), an int32 array of the leaf's shape holding
      ``edge * S + slot`` for every element; ``None`` for leaves outside the graph (non-float leaves).
    pos_w: ``(N,)`` int32 word-position ids (token id + 1 on token nodes, else 0).
    treedef: the params tree structure.
    blocks: ``(name, edge_start, edge_end, edge_type)`` per block of edges, for inspection.
    uncovered: paths of float leaves the graph leaves out (``graph_trace.trace_graph(...,
      allow_partial=True)``); their ``positions`` are ``None``.
  """

  num_nodes: int
  senders: np.ndarray
  receivers: np.ndarray
  edge_type: np.ndarray
  edge_const: np.ndarray
  num_slots: int
  positions: tuple[np.ndarray | None, ...]
  pos_w: np.ndarray
  treedef: Any
  blocks: tuple[tuple[str, int, int, int], ...]
  uncovered: tuple[str, ...] = ()

  @property
  def num_edges(self) -> int:
    return int(self.senders.shape[0])

  def leaf_groups(self) -> list[int]:
    """Indices of the leaves in the graph (the scaling groups: one per parameter tensor)."""
    return [i for i, p in enumerate(self.positions) if p is not None]

  def gather(self, leaves_history: list[jax.Array], width: int | None = None) -> jax.Array:
    """Edge features ``(E, width)`` with column ``slot * ctx + t`` from per-leaf histories ``(ctx, *shape)``.

    Auxiliary edges get their constant in slot 0 for every ``t``; unused slots are 0. ``width`` pads
    to a model's input width (default ``num_slots * ctx``).
    """
    ctx = next(h.shape[0] for h, p in zip(leaves_history, self.positions, strict=True) if p is not None)
    dtype = jnp.result_type(*[h.dtype for h, p in zip(leaves_history, self.positions, strict=True)
                              if p is not None])
    flat = jnp.zeros((self.num_edges * self.num_slots, ctx), dtype)
    const_rows = np.flatnonzero(self.edge_const) * self.num_slots
    flat = flat.at[const_rows].set(jnp.broadcast_to(jnp.asarray(self.edge_const[self.edge_const != 0],
                                                                dtype)[:, None], (len(const_rows), ctx)))
    for h, p in zip(leaves_history, self.positions, strict=True):
      if p is not None:
        flat = flat.at[p.reshape(-1)].set(h.reshape(ctx, -1).T.astype(dtype))
    feats = flat.reshape(self.num_edges, self.num_slots * ctx)
    if width is not None and width > feats.shape[1]:
      feats = jnp.pad(feats, ((0, 0), (0, width - feats.shape[1])))
    return feats

  def scatter(self, edge_values: jax.Array) -> list[jax.Array | None]:
    """Per-leaf arrays (leaf shapes) read from edge values ``(E, >=S)``; ``None`` for leaves outside."""
    flat = edge_values[:, : self.num_slots].reshape(-1)
    return [None if p is None else flat[p] for p in self.positions]

  def fan_in(self, leaf: int) -> int:
    """The most edges of leaf ``leaf`` that any one neuron receives (a Dense ``(in, out)`` kernel: ``in``)."""
    edges = np.unique(self.positions[leaf].reshape(-1) // self.num_slots)
    return int(np.bincount(self.receivers[edges]).max())

  def without(self, leaves: Sequence[int]) -> NeuralGraph:
    """The graph with the edges of ``leaves`` removed (their paths added to ``uncovered``).

    Neurons left with no edge but their self-loop (the input pixels of a dropped first layer) are removed
    too and the rest renumbered; the kept leaves' ``positions`` point at the same edges as before.
    """
    s, n_edges = self.num_slots, self.num_edges
    drop = set(leaves)
    gone = np.zeros(n_edges, bool)
    for i in drop:
      gone[self.positions[i].reshape(-1) // s] = True
    shared = [i for i, p in enumerate(self.positions)
              if p is not None and i not in drop and gone[p.reshape(-1) // s].any()]
    if shared:
      raise ValueError(f"leaves {shared} share edges with the removed leaves {sorted(drop)}; remove them "
                       "together.")
    keep = ~gone
    linked = keep & (self.senders != self.receivers)
    used = np.zeros(self.num_nodes, bool)
    used[self.senders[linked]] = True
    used[self.receivers[linked]] = True
    keep &= used[self.senders] & used[self.receivers]
    new_node = (np.cumsum(used) - 1).astype(np.int32)
    new_edge = (np.cumsum(keep) - 1).astype(np.int32)
    before = np.concatenate([[0], np.cumsum(keep)])
    positions = tuple(None if (p is None or i in drop) else
                      (new_edge[p // s] * s + p % s).astype(np.int32) for i, p in enumerate(self.positions))
    blocks = tuple((name, int(before[a]), int(before[b]), t) for name, a, b, t in self.blocks
                   if before[b] > before[a])
    return dataclasses.replace(
        self, num_nodes=int(used.sum()), senders=new_node[self.senders[keep]],
        receivers=new_node[self.receivers[keep]], edge_type=self.edge_type[keep],
        edge_const=self.edge_const[keep], positions=positions, pos_w=self.pos_w[used], blocks=blocks,
        uncovered=tuple(self.uncovered) + tuple(self.leaf_paths()[i] for i in sorted(drop)))

  def leaf_paths(self) -> list[str]:
    """Every params leaf's path (``path_str``), in ``positions`` order."""
    like = jax.tree.unflatten(self.treedef, list(range(len(self.positions))))
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]


class _Builder:
  """Accumulates nodes and edge blocks in the official code's order."""

  def __init__(self):
    self.num_nodes = 0
    self.blocks: list[tuple[str, np.ndarray, np.ndarray, int, float]] = []  # name, snd, rcv, type, const
    self.slot_of: dict[str, np.ndarray] = {}  # leaf path -> (edge-in-block, slot) per element
    self.leaf_block: dict[str, int] = {}
    self.pos_w: dict[int, int] = {}
    self.uses_conv = False

  def nodes(self, n: int) -> np.ndarray:
    out = np.arange(self.num_nodes, self.num_nodes + n)
    self.num_nodes += n
    return out

  def _add(self, name, snd, rcv, etype, const=0.0, path=None, elem_edge=None, elem_slot=None):
    if path is not None:
      self.leaf_block[path] = len(self.blocks)
      self.slot_of[path] = (elem_edge, elem_slot)
    self.blocks.append((name, np.asarray(snd, np.int64), np.asarray(rcv, np.int64), etype, const))

  def weight(self, path: str, shape: tuple[int, ...], inp: np.ndarray, out: np.ndarray, etype: int,
             reverse: bool = False):
    """A dense (in, out) weight, or a conv (kh, kw, in, out) kernel; edge (i, o) at i*n_out + o."""
    n_in, n_out = shape[-2], shape[-1]
    rows = np.arange(n_in)[:, None] * n_out + np.arange(n_out)[None, :]  # (in, out) -> edge in block
    i_idx, o_idx = np.divmod(np.arange(n_in * n_out), n_out)
    snd, rcv = inp[i_idx], out[o_idx]
    if reverse:  # NiNo's k edges run from the q neurons to the stream neurons
      snd, rcv = out[o_idx], inp[i_idx]
    if len(shape) == 4:
      kh, kw = shape[:2]
      if kh * kw > MAX_SLOTS:
        raise ValueError(f"{path}: a {kh}x{kw} kernel has more than {MAX_SLOTS} values per edge; NiNo's "
                         "graphs take kernels up to 3x3.")
      if kh * kw > 1:
        self.uses_conv = True
      edge = np.broadcast_to(rows, shape)
      slot = np.broadcast_to((np.arange(kh)[:, None] * kw + np.arange(kw)[None, :])[:, :, None, None], shape)
    else:
      edge, slot = rows.reshape(shape), np.zeros(shape, np.int64)
    self._add(path, snd, rcv, etype, 0.0, path, edge, slot)

  def vector(self, path: str, node: int, out: np.ndarray, etype: int, shape: tuple[int, ...] | None = None):
    shape = shape or (len(out),)
    self._add(path, np.full(len(out), node), out, etype, 0.0, path, np.arange(len(out)).reshape(shape),
              np.zeros(shape, np.int64))

  def aux(self, name: str, snd, rcv, etype: int, const: float):
    self._add(name, snd, rcv, etype, const)

  def finish(self, params, allow_partial: bool = False) -> NeuralGraph:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in leaves_with_path]
    missing = [p for p, (_, x) in zip(paths, leaves_with_path, strict=True)
               if p not in self.slot_of and jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    if missing and not allow_partial:
      raise ValueError(f"Parameters {missing} are not part of the recognised network; "
                       "see optax_nowcast.graphs for the layers it knows, or pass a spec.")
    self.aux("self_loop", np.arange(self.num_nodes), np.arange(self.num_nodes), SELF_LOOP, 2.0)
    s = MAX_SLOTS if self.uses_conv else 1
    starts = np.cumsum([0] + [len(b[1]) for b in self.blocks])
    positions = []
    for p in paths:
      if p not in self.slot_of:
        positions.append(None)
        continue
      edge, slot = self.slot_of[p]
      positions.append(((starts[self.leaf_block[p]] + edge) * s + slot).astype(np.int32))
    pos_w = np.zeros(self.num_nodes, np.int32)
    for node, v in self.pos_w.items():
      pos_w[node] = v
    const = np.concatenate([np.full(len(b[1]), b[4], np.float32) for b in self.blocks])
    return NeuralGraph(
        num_nodes=self.num_nodes,
        senders=np.concatenate([b[1] for b in self.blocks]).astype(np.int32),
        receivers=np.concatenate([b[2] for b in self.blocks]).astype(np.int32),
        edge_type=np.concatenate([np.full(len(b[1]), b[3]) for b in self.blocks]).astype(np.int32),
        edge_const=const, num_slots=s, positions=tuple(positions), pos_w=pos_w, treedef=treedef,
        blocks=tuple((b[0], int(starts[i]), int(starts[i + 1]), b[3]) for i, b in enumerate(self.blocks)),
        uncovered=tuple(missing))


def path_str(path) -> str:
  """A leaf's key path (``jax.tree_util.tree_flatten_with_path``) as ``"params/Dense_0/kernel"``."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _unwrap(params) -> tuple[Mapping, str]:
  """The module dict and its path prefix (Linen ``{"params": ...}`` or an NNX ``State``/dict)."""
  if hasattr(params, "to_pure_dict"):
    params = params.to_pure_dict()
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return params["params"], "params/"
  return params, ""


def _is_leaf_module(m) -> bool:
  return isinstance(m, Mapping) and all(not isinstance(v, Mapping) for v in m.values())


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _leaf_modules(modules: Mapping, prefix: str, order: Sequence[str] | None = None) -> list[tuple[str, Any]]:
  """Layer modules in forward order, looking through containers (``nn.Sequential``, NNX lists).

  Order: ``order`` for the top level if given, else natural sort of the names (``Dense_2`` before
  ``Dense_10``; Linen's automatic names ``Conv_i``/``Dense_i`` put convs first).
  """
  out = []
  for k in _ordered(modules, order, prefix):
    m = modules[k]
    if isinstance(m, Mapping) and m and all(isinstance(v, Mapping) for v in m.values()):
      out.extend(_leaf_modules(m, f"{prefix}{k}/"))
    else:
      out.append((f"{prefix}{k}", m))
  return out


def _sequential(b: _Builder, modules: Mapping, prefix: str, order: Sequence[str] | None = None,
                allow_partial: bool = False):
  stream: np.ndarray | None = None
  for path, m in _leaf_modules(modules, prefix, order):
    if not _is_leaf_module(m) or "kernel" not in m:
      if allow_partial:
        continue  # left out of the graph (a norm layer between Dense/Conv layers): the fallback's
      raise ValueError(f"{path}: not a Dense or Conv layer ({sorted(m) if isinstance(m, Mapping) else m}); "
                       "neural_graph recognises sequential Dense/Conv stacks and GPT-style transformers.")
    k = _shape(m["kernel"])
    if len(k) not in (2, 4):
      raise ValueError(f"{path}/kernel has shape {k}: only Dense (in, out) and 2-D Conv (kh, kw, in, out) "
                       "kernels are recognised in a sequential network.")
    n_in, n_out = k[-2], k[-1]
    if stream is None:
      stream = b.nodes(n_in)
    elif n_in != len(stream):
      if len(k) == 2 and n_in % len(stream) == 0:
        stream = np.tile(stream, n_in // len(stream))  # NHWC flatten: unit i belongs to channel i % C
      else:
        raise ValueError(f"{path}: takes {n_in} inputs but the previous layer has {len(stream)} units. "
                         "If the layers are not in forward order by name, pass order=[...] (top-level "
                         "module names).")
    bias_node = b.nodes(1)[0] if "bias" in m else None
    out = b.nodes(n_out)
    b.weight(path + "/kernel", k, stream, out, CONV if len(k) == 4 else DENSE)
    if bias_node is not None:
      b.vector(path + "/bias", bias_node, out, BIAS)
    stream = out


def _is_attention(m) -> bool:
  return isinstance(m, Mapping) and {"query", "key", "value", "out"} <= set(m)


def _is_norm(m) -> bool:
  return _is_leaf_module(m) and "scale" in m and len(_shape(m["scale"])) == 1 and "kernel" not in m


def _natural_key(name) -> tuple:
  """Sort key that puts ``h_2`` before ``h_10`` (JAX pytrees sort dict keys as strings)."""
  parts = re.split(r"(\d+)", str(name))
  return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def _ordered(modules: Mapping, order: Sequence[str] | None, prefix: str) -> list:
  if order is None:
    return sorted(modules, key=_natural_key)
  if sorted(map(str, order)) != sorted(map(str, modules)):
    raise ValueError(f"order={list(order)} must list exactly the modules under '{prefix or '/'}': "
                     f"{sorted(map(str, modules))}.")
  by_str = {str(k): k for k in modules}
  return [by_str[str(k)] for k in order]


def _is_position_embedding(name: str) -> bool:
  return "pos" in name.lower() or name.lower() in ("wpe",)


def _transformer(b: _Builder, modules: Mapping, prefix: str, order: Sequence[str] | None = None):
  """GPT-style: embeddings, pre-LN blocks (LN, MHA, LN, Dense, Dense), a final LN (NiNo's graph)."""
  names = _ordered(modules, order, prefix)
  embeds = [n for n in names if _is_leaf_module(modules[n]) and "embedding" in modules[n]]
  embeds.sort(key=_is_position_embedding)  # token embedding first, then position
  if not 1 <= len(embeds) <= 2 or (len(embeds) == 2 and not _is_position_embedding(embeds[1])):
    raise ValueError(f"A transformer graph needs a token nn.Embed and optionally a position nn.Embed (a name "
                     f"with 'pos' or 'wpe'); got embeddings {embeds} among {names}.")
  rest = [n for n in names if n not in embeds]
  blocks = [n for n in rest if not _is_norm(modules[n])] + [n for n in rest if _is_norm(modules[n])]
  d = _shape(modules[embeds[0]]["embedding"])[1]
  # Pending 1-D nodes go right before the stream neurons they act on (the official numbering).
  tok_shape = _shape(modules[embeds[0]]["embedding"])
  tok = b.nodes(tok_shape[0])
  for t, node in enumerate(tok):
    b.pos_w[int(node)] = t + 1
  pos = b.nodes(_shape(modules[embeds[1]]["embedding"])[0]) if len(embeds) == 2 else None

  def stream_with(pre: list[tuple[str, Any]]):
    """Creates nodes for the 1-D params in ``pre`` then ``d`` stream neurons; returns (nodes, stream)."""
    pre_nodes = {key: b.nodes(1)[0] for key, _ in pre}
    return pre_nodes, b.nodes(d)

  def block_parts(name):
    m = modules[name]
    if not isinstance(m, Mapping):
      raise ValueError(f"{prefix}{name}: not a module.")
    norms = [k for k in m if _is_norm(m[k])]
    attn = [k for k in m if _is_attention(m[k])]
    dense = [k for k in m if _is_leaf_module(m[k]) and "kernel" in m[k] and len(_shape(m[k]["kernel"])) == 2]
    return m, norms, attn, dense

  # Walk: embeddings -> S0; per block: attention -> S1; MLP -> S2 (next block's S0); final LN.
  first = blocks[0] if blocks else None
  pre = []
  if first is not None and not _is_norm(modules[first]):
    m, norms, attn, dense = block_parts(first)
    pre = [("ln_1/scale", None), ("ln_1/bias", None), ("k/bias", None)]
  elif first is not None:
    pre = [("ln_f/scale", None), ("ln_f/bias", None)]
  pre_nodes, stream = stream_with(pre)
  b.weight(prefix + embeds[0] + "/embedding", tok_shape, tok, stream, WORD_EMB)
  if pos is not None:
    b.weight(prefix + embeds[1] + "/embedding", _shape(modules[embeds[1]]["embedding"]), pos, stream, POS_EMB)

  for bi, name in enumerate(blocks):
    p = prefix + name
    if _is_norm(modules[name]):  # the final LayerNorm
      if bi != len(blocks) - 1:
        raise ValueError(f"{p}: a LayerNorm between transformer blocks is not recognised.")
      b.vector(p + "/scale", pre_nodes["ln_f/scale"], stream, NORM_W)
      if "bias" in modules[name]:
        b.vector(p + "/bias", pre_nodes["ln_f/bias"], stream, BIAS)
      continue
    m, norms, attn, dense = block_parts(name)
    if len(norms) != 2 or len(attn) != 1 or len(dense) != 2:
      raise ValueError(f"{p}: expected a pre-LN transformer block (2 LayerNorm, 1 "
                       f"MultiHeadDotProductAttention, 2 Dense), got norms {norms}, attention {attn}, "
                       f"dense {dense}.")
    ln1, ln2 = sorted(norms, key=_natural_key)
    dense = sorted(dense, key=_natural_key)
    if _shape(m[dense[0]]["kernel"])[0] != d and _shape(m[dense[1]]["kernel"])[0] == d:
      dense = dense[::-1]  # the MLP's first layer is the one that reads the d-wide stream
    a = m[attn[0]]
    ap = f"{p}/{attn[0]}"
    q_shape = _shape(a["query"]["kernel"])  # (d, H, dh)
    heads, dh = q_shape[1], q_shape[2]
    hd = heads * dh
    # LayerNorm 1 and the k bias act on the current stream.
    b.vector(f"{p}/{ln1}/scale", pre_nodes["ln_1/scale"], stream, NORM_W)
    b.vector(f"{p}/{ln1}/bias", pre_nodes["ln_1/bias"], stream, BIAS)
    head_nodes = b.nodes(heads)
    qb, vb = b.nodes(1)[0], b.nodes(1)[0]
    q, v = b.nodes(hd), b.nodes(hd)
    b.weight(ap + "/query/kernel", (d, hd), stream, q, ATTN_Q)
    b.slot_of[ap + "/query/kernel"] = tuple(x.reshape(q_shape) for x in b.slot_of[ap + "/query/kernel"])
    for h in range(heads):
      b.aux(f"{ap}/q.head{h}", np.full(dh, head_nodes[h]), q[h * dh:(h + 1) * dh], HEAD, 1.0)
    b.vector(ap + "/query/bias", qb, q, BIAS, (heads, dh))
    b.weight(ap + "/key/kernel", (d, hd), stream, q, ATTN_K, reverse=True)
    b.slot_of[ap + "/key/kernel"] = tuple(x.reshape(q_shape) for x in b.slot_of[ap + "/key/kernel"])
    b.vector(ap + "/key/bias", pre_nodes["k/bias"], stream[:hd], BIAS, (heads, dh))
    b.weight(ap + "/value/kernel", (d, hd), stream, v, ATTN_V)
    b.slot_of[ap + "/value/kernel"] = tuple(x.reshape(q_shape) for x in b.slot_of[ap + "/value/kernel"])
    for h in range(heads):
      b.aux(f"{ap}/v.head{h}", np.full(dh, head_nodes[h]), v[h * dh:(h + 1) * dh], HEAD, 1.0)
    b.vector(ap + "/value/bias", vb, v, BIAS, (heads, dh))
    pre1, stream1 = stream_with([("proj/bias", None), ("ln_2/scale", None), ("ln_2/bias", None)])
    b.aux(f"{ap}/v.res", stream, stream1, RESIDUAL, 1.0)
    out_shape = _shape(a["out"]["kernel"])  # (H, dh, d)
    b.weight(ap + "/out/kernel", (hd, d), v, stream1, DENSE)
    b.slot_of[ap + "/out/kernel"] = tuple(x.reshape(out_shape) for x in b.slot_of[ap + "/out/kernel"])
    b.vector(ap + "/out/bias", pre1["proj/bias"], stream1, BIAS)
    b.vector(f"{p}/{ln2}/scale", pre1["ln_2/scale"], stream1, NORM_W)
    b.vector(f"{p}/{ln2}/bias", pre1["ln_2/bias"], stream1, BIAS)
    fc, proj = dense
    fc_shape = _shape(m[fc]["kernel"])
    fcb = b.nodes(1)[0]
    hidden = b.nodes(fc_shape[1])
    b.weight(f"{p}/{fc}/kernel", fc_shape, stream1, hidden, DENSE)
    b.vector(f"{p}/{fc}/bias", fcb, hidden, BIAS)
    nxt = blocks[bi + 1] if bi + 1 < len(blocks) else None
    pre2 = [("proj/bias", None)]
    if nxt is not None and _is_norm(modules[nxt]):
      pre2 += [("ln_f/scale", None), ("ln_f/bias", None)]
    elif nxt is not None:
      pre2 += [("ln_1/scale", None), ("ln_1/bias", None), ("k/bias", None)]
    pre_nodes, stream2 = stream_with(pre2)
    b.aux(f"{p}/{fc}.res", stream1, stream2, RESIDUAL, 1.0)
    b.weight(f"{p}/{proj}/kernel", _shape(m[proj]["kernel"]), hidden, stream2, DENSE)
    b.vector(f"{p}/{proj}/bias", pre_nodes["proj/bias"], stream2, BIAS)
    stream = stream2


def neural_graph(params, order: Sequence[str] | None = None, allow_partial: bool = False) -> NeuralGraph:
  """Builds the neural graph of a Flax parameter tree (Linen ``{"params": ...}`` dict or an NNX state).

  JAX sorts dict keys, so the forward order of the layers is read from their names (natural sort, e.g.
  ``Dense_0 .. Dense_10``, ``h_0 .. h_11``; convs before denses with Linen's automatic names). Give
  ``order``, the top-level module names in forward order, when the names do not sort that way. With
  ``allow_partial``, modules of a Dense/Conv stack that are neither (a norm layer) are left out of the
  graph (``graph.uncovered``) instead of refused. For any other model, read the graph from its forward
  pass: :func:`optax_nowcast.graph_trace.trace_graph`.

  Raises:
    ValueError: naming the parameter path that is not recognised and what is expected.
  """
  modules, prefix = _unwrap(params)
  if not isinstance(modules, Mapping) or not modules:
    raise ValueError(f"params must be a non-empty dict of modules, got {type(params).__name__}.")
  b = _Builder()
  if any(_is_leaf_module(m) and "embedding" in m for m in modules.values()):
    _transformer(b, modules, prefix, order)
  else:
    _sequential(b, modules, prefix, order, allow_partial)
  if hasattr(params, "to_pure_dict"):
    params = params.to_pure_dict()
  return b.finish(params, allow_partial)


def laplacian_pe(graph: NeuralGraph, n_eig: int = 8, dense_below: int = 100, seed: int = 0) -> np.ndarray:
  """NiNo's Laplacian positional encoding: ``(N, n_eig)`` float32.

  Eigenvectors of the symmetric-normalised Laplacian ``I - D^-1/2 A D^-1/2`` of the unweighted, undirected
  graph without self-loops (parallel edges merged), sorted by eigenvalue; the trivial first one is dropped
  and the next ``n_eig`` kept (zero-padded for tiny graphs). Dense ``eigh`` below ``dense_below`` nodes,
  sparse ``eigsh`` above (with a fixed start vector, so it is deterministic, and twice the pairs needed, so
  a repeated eigenvalue is not skipped). Signs are made deterministic (largest-magnitude entry positive);
  NiNo flips them at random in training, so any sign is valid input.
  """
  n = graph.num_nodes
  mask = graph.senders != graph.receivers
  s, r = graph.senders[mask], graph.receivers[mask]
  a = np.zeros((n, n)) if n < dense_below else None
  if a is not None:
    a[s, r] = 1.0
    a[r, s] = 1.0
    deg = a.sum(1)
    dinv = np.where(deg > 0, deg ** -0.5, 0.0)
    lap = np.eye(n) - dinv[:, None] * a * dinv[None, :]
    _, vecs = np.linalg.eigh(lap)
    vecs = vecs[:, 1: n_eig + 1]
  else:
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla
    adj = sp.coo_matrix((np.ones(2 * len(s)), (np.r_[s, r], np.r_[r, s])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # merge duplicates
    deg = np.asarray(adj.sum(1)).ravel()
    dinv = sp.diags(np.where(deg > 0, deg ** -0.5, 0.0))
    lap = sp.eye(n) - dinv @ adj @ dinv
    v0 = np.random.default_rng(seed).standard_normal(n)
    # Lanczos can return one copy of a repeated eigenvalue and skip the other (the transformers' graphs
    # have many): ask for twice as many pairs as needed and keep the smallest.
    vals, vecs = sla.eigsh(lap, k=min(2 * (n_eig + 1), n - 1), which="SA", v0=v0, tol=1e-8)
    vecs = vecs[:, np.argsort(vals)][:, 1: n_eig + 1]
  idx = np.argmax(np.abs(vecs), axis=0)
  vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])[None, :]
  out = np.zeros((n, n_eig), np.float32)
  out[:, : vecs.shape[1]] = vecs
  return out


def eigenvector_centrality(graph: NeuralGraph, iters: int = 1000, tol: float = 1e-10) -> np.ndarray:
  """Eigenvector centrality of the undirected graph (NiNo++'s extra node feature): ``(N,)``, max 1.

  Power iteration on ``A + I`` (the shift makes it converge on bipartite graphs, same eigenvectors).
  """
  n = graph.num_nodes
  mask = graph.senders != graph.receivers
  s, r = graph.senders[mask], graph.receivers[mask]
  x = np.ones(n) / n
  for _ in range(iters):
    y = x.copy()
    np.add.at(y, r, x[s])
    np.add.at(y, s, x[r])
    y /= np.linalg.norm(y)
    if np.abs(y - x).max() < tol:
      x = y
      break
    x = y
  return (x / x.max()).astype(np.float32)



@dataclasses.dataclass(frozen=True, eq=False)
class SubGraphs:
  """A neural graph cut into parts (e.g. one per top-level module), each padded to one size.

  NiNo on very large models runs its graph network on one part at a time (``lax.map`` over the parts),
  so its scratch memory is bounded by the largest part, not the whole model. A part holds the edges of its
  parameters plus the auxiliary edges (self-loops, residual and head edges) between its nodes; each
  parameter edge lies in exactly one part. Padding edges join a dummy node ``num_nodes`` that no real
  node hears from.

  Attributes:
    names: the part names.
    edges: ``(P, E_max)`` int32 index of each part edge in the full graph (0 on padding).
    param_mask: ``(P, E_max)`` bool, True on the part's parameter edges (their predictions are kept).
    real_mask: ``(P, E_max)`` bool, True on every real (non-padding) edge.
    senders, receivers: ``(P, E_max)`` int32 node ids local to the part.
    num_nodes: ``N_max + 1`` nodes per part (the last one is the dummy).
    part_nodes: per part, the full-graph ids of its nodes (local id ``i`` is ``part_nodes[i]``).
  """

  names: tuple[str, ...]
  edges: np.ndarray
  param_mask: np.ndarray
  real_mask: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  num_nodes: int
  part_nodes: tuple[np.ndarray, ...]

  def part_graph(self, i: int, graph: NeuralGraph) -> NeuralGraph:
    """Part ``i`` alone as a :class:`NeuralGraph` (for its Laplacian PE or centrality)."""
    m = self.real_mask[i]
    e = self.edges[i][m]
    return dataclasses.replace(
        graph, num_nodes=len(self.part_nodes[i]), senders=self.senders[i][m], receivers=self.receivers[i][m],
        edge_type=graph.edge_type[e], edge_const=graph.edge_const[e], positions=(),
        pos_w=graph.pos_w[self.part_nodes[i]], blocks=())


def module_parts(graph: NeuralGraph, params) -> list[tuple[str, np.ndarray]]:
  """``(module name, parameter edge ids)`` per top-level module of ``params`` (the leaves' first path
  component under ``params``), in the order the modules first appear among the edges."""
  if hasattr(params, "to_pure_dict"):
    params = params.to_pure_dict()
  leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
  parts: dict[str, list[np.ndarray]] = {}
  for (path, _), pos in zip(leaves_with_path, graph.positions, strict=True):
    if pos is None:
      continue
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    name = names[1] if names[0] == "params" and len(names) > 1 else names[0]
    parts.setdefault(name, []).append(np.unique(pos.reshape(-1) // graph.num_slots))
  out = [(n, np.unique(np.concatenate(e))) for n, e in parts.items()]
  return sorted(out, key=lambda x: int(x[1].min()))


def split_graph(graph: NeuralGraph, parts: Sequence[tuple[str, np.ndarray]]) -> SubGraphs:
  """Cuts ``graph`` into ``parts`` (``(name, parameter edge ids)``, e.g. from :func:`module_parts`).

  >>> import jax.numpy as jnp
  >>> params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
  ...                      "Dense_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}}
  >>> g = neural_graph(params)
  >>> sub = split_graph(g, module_parts(g, params))
  >>> sub.names, [len(n) for n in sub.part_nodes], int(sub.param_mask.sum()) == 3 * 4 + 4 + 4 * 2 + 2
  (('Dense_0', 'Dense_1'), [8, 7], True)
  """
  owned = np.zeros(graph.num_edges, bool)
  for _, e in parts:
    if owned[e].any():
      raise ValueError("split_graph: a parameter edge is in two parts; parts must be disjoint.")
    owned[e] = True
  aux = np.flatnonzero(~owned)  # self-loops, residual and head edges: no parameter of their own
  built = []
  for name, e in parts:
    nodes = np.unique(np.concatenate([graph.senders[e], graph.receivers[e]]))
    inside = np.isin(graph.senders[aux], nodes) & np.isin(graph.receivers[aux], nodes)
    edges = np.concatenate([e, aux[inside]])
    local = np.full(graph.num_nodes, -1, np.int64)
    local[nodes] = np.arange(len(nodes))
    built.append((name, edges, len(e), nodes, local[graph.senders[edges]], local[graph.receivers[edges]]))
  e_max = max(len(b[1]) for b in built)
  n_max = max(len(b[3]) for b in built)
  p = len(built)
  edges = np.zeros((p, e_max), np.int32)
  senders = np.full((p, e_max), n_max, np.int32)
  receivers = np.full((p, e_max), n_max, np.int32)
  param_mask = np.zeros((p, e_max), bool)
  real_mask = np.zeros((p, e_max), bool)
  for i, (_, ed, n_param, _, snd, rcv) in enumerate(built):
    edges[i, : len(ed)] = ed
    senders[i, : len(ed)] = snd
    receivers[i, : len(ed)] = rcv
    param_mask[i, :n_param] = True
    real_mask[i, : len(ed)] = True
  return SubGraphs(names=tuple(b[0] for b in built), edges=edges, param_mask=param_mask, real_mask=real_mask,
                   senders=senders, receivers=receivers, num_nodes=n_max + 1,
                   part_nodes=tuple(b[3] for b in built))

__all__ = [
    "NUM_EDGE_TYPES",
    "NeuralGraph",
    "SubGraphs",
    "module_parts",
    "split_graph",
    "eigenvector_centrality",
    "laplacian_pe",
    "neural_graph",
    "path_str",
]
