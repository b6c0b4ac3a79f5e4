r"""WNN (Jang et al., ICML 2023) and WNN+ (the NiNo paper's per-parameter baseline), in Flax.

**WNN+** runs one MLP on every parameter element, reading its ``ctx`` states scaled per tensor as in NiNo
(:func:`~optax_nowcast.predictors.nino.scale_history`) and the element's edge type in the neural graph
(dense, conv, bias, norm, embedding, attention q/k/v):

.. math::

  z = W_p \tilde w + b_p + E[\mathrm{type}], \quad
  \Delta = f_6(\mathrm{SiLU}(f_4(\mathrm{SiLU}(f_2(\mathrm{SiLU}(f_0(z))))))) \in \mathbb{R}^K, \quad
  \hat w = (\tilde w_{last} + \Delta_k)\,\sigma + \mu,

a direct multi-step head over horizons ``1..K`` used with k-decay. ``wnn_plus(weights=...)`` reads the NiNo
repository's ``nino_mlp`` checkpoints (``.pt`` or ``.npz``; hidden 128 or 32) or our own params.

**WNN** (the published architecture, 9,425 parameters per model; three models for conv kernels, dense
kernels and 1-D parameters): per coordinate, with the 5 states ``w_0..w_4``,
``L = w - w_0``, ``s = 2 (max L - min L + 1e-8 + 1e-5)``, ``x = L / s``, ``d = x[1:] - x[:-1]``; two streams
``Dense(64) -> act -> Dense(32) -> LeakyReLU(0.3)`` on ``x`` and on ``d``, where
``act(h) = xi1(c) * exp(xi2(c) * h) + xi3(c)``, ``c = relu(Dense(8)(h))``; then ``tanh(Dense(1)([., .]))`` and
``w_hat = w_4 + y s`` (a fixed jump of 5 intervals, the skip it was trained for).

>>> import jax, jax.numpy as jnp
>>> p = WNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
>>> sum(x.size for x in jax.tree.leaves(p))
9425
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optax_nowcast import graph_trace, weights_io
from optax_nowcast import graphs as graphs_lib
from optax_nowcast.predictors.base import Predictor, full_precision, map_rows, row_chunk
from optax_nowcast.predictors.nino import scale_history

# --------------------------------------------------------------------------------------------- WNN+


class WNNPlus(nn.Module):
  """The WNN+ MLP on ``(..., ctx)`` scaled states and ``(...)`` edge types: ``(..., K)`` deltas."""

  hidden: int = 128
  horizons: int = 40
  edge_types: int = graphs_lib.NUM_EDGE_TYPES
  layers: int = 3

  def setup(self):
    self.proj = nn.Dense(self.hidden, name="edge_proj")
    self.embed = nn.Embed(self.edge_types, self.hidden, name="layer_embed")
    self.mlp = [nn.Dense(self.hidden, name=f"fc{2 * i}") for i in range(self.layers)]
    self.out = nn.Dense(self.horizons, name=f"fc{2 * self.layers}")

  def features(self, x: jax.Array, edge_type: jax.Array) -> jax.Array:
    h = self.proj(x) + self.embed(edge_type)
    for layer in self.mlp:
      h = nn.silu(layer(h))
    return h

  def __call__(self, x: jax.Array, edge_type: jax.Array, k: jax.Array | None = None) -> jax.Array:
    h = self.features(x, edge_type)
    if k is None:
      return self.out(h)
    if not self.out.has_variable("params", "kernel"):
      self.out(h)  # create the head at init
    p = self.out.variables["params"]
    kk = jnp.clip(jnp.asarray(k, jnp.int32), 1, self.horizons) - 1
    kernel, bias = jnp.asarray(p["kernel"]), jnp.asarray(p["bias"])
    return h @ jax.lax.dynamic_index_in_dim(kernel, kk, 1, False) + bias[kk]

  def intermediates(self, x, edge_type):
    z0 = self.proj(x) + self.embed(edge_type)
    out, h = {"z0": z0}, z0
    for i, layer in enumerate(self.mlp):
      h = nn.silu(layer(h))
      out[f"hidden_{i + 1}"] = h
    out["dms_raw"] = self.out(h)
    return out


def load_official_wnn_plus(path: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, dict[str, int]]:
  """The NiNo repository's WNN+ checkpoint (``nino_mlp*.pt`` / ``.npz`` or a state dict) as our params."""
  sd = weights_io.read_state_dict(path)
  src = weights_io.source_name(path)
  if "edge_mlp.fc.0.weight" not in sd or "gnn.convs.0.edge_encoder.weight" in sd:
    raise ValueError(f"{src} is not a WNN+ (nino_mlp) checkpoint; keys start {sorted(sd)[:5]}.")
  t = functools.partial(weights_io.tensor, sd, source=src)
  layers = len([k for k in sd if k.startswith("edge_mlp.fc.") and k.endswith(".weight")]) - 1
  config = {"hidden": int(t("edge_proj.fc.0.weight").shape[0]),
            "horizons": int(t(f"edge_mlp.fc.{2 * layers}.weight").shape[0]),
            "edge_types": int(t("layer_embed.weight").shape[0]), "layers": layers,
            "ctx": int(t("edge_proj.fc.0.weight").shape[1])}
  want = jax.tree.map(np.shape, wnn_plus_template(config)["params"])
  official = {"edge_proj": "edge_proj.fc.0",
              **{f"fc{2 * i}": f"edge_mlp.fc.{2 * i}" for i in range(layers + 1)}}
  params = {"layer_embed": {"embedding": t("layer_embed.weight", shape=want["layer_embed"]["embedding"])}}
  for name, key in official.items():
    params[name] = {"kernel": t(key + ".weight", shape=want[name]["kernel"][::-1]).T,  # torch: (out, in)
                    "bias": t(key + ".bias", shape=want[name]["bias"])}
  return {"params": jax.tree.map(jnp.asarray, params)}, config


def wnn_plus_template(config: Mapping[str, Any]) -> Any:
  """The structure of WNN+'s params for ``config`` (what a ``.msgpack`` file is read into)."""
  return WNNPlus(**{k: v for k, v in config.items() if k != "ctx"}).init(
      jax.random.PRNGKey(0), jnp.zeros((1, config["ctx"])), jnp.zeros((1,), jnp.int32))


def element_edge_types(graph: graphs_lib.NeuralGraph) -> list[np.ndarray | None]:
  """Per params leaf, the edge type of every element (from the neural graph)."""
  return [None if p is None else graph.edge_type[p // graph.num_slots].astype(np.int32)
          for p in graph.positions]


def _rows_per_leaf(fn, leaf_rows: list[tuple], chunk: int | None) -> list[jax.Array]:
  """``fn`` on each leaf's rows. With ``chunk``, all leaves' rows go through :func:`map_rows` as one batch
  (one cache-sized loop, whatever the leaf sizes); with ``None``, one call per leaf, which keeps the layout
  of sharded leaves (no concatenation)."""
  if chunk is None:
    return [fn(*(jnp.asarray(a) for a in rows)) for rows in leaf_rows]
  sizes = [rows[0].shape[0] for rows in leaf_rows]
  batch = [jnp.concatenate([jnp.asarray(rows[j]) for rows in leaf_rows]) for j in range(len(leaf_rows[0]))]
  return jnp.split(map_rows(fn, *batch, chunk=chunk), np.cumsum(sizes)[:-1])


def wnn_plus(weights: str | os.PathLike | Mapping[str, Any] | None = None, *, model_params: Any = None,
             config: Mapping[str, Any] | None = None, order: Sequence[str] | None = None,
             chunk: int | str | None = "auto", apply_fn: Callable[..., Any] | None = None,
             example_input: Any = None) -> Predictor:
  """The WNN+ predictor (use it with ``horizon=schedules.k_decay(40, ...)`` as in NiNo).

  With no argument it uses the weights shipped in ``optax_nowcast/pretrained`` (see its MODEL_CARD.md).

  Args:
    weights: a ``.msgpack`` file from ``python -m optax_nowcast.metatrain train --predictor wnn+``, or the
      NiNo repository's ``nino_mlp`` checkpoint (``.pt``/``.npz``); or
    model_params, config: our own :class:`WNNPlus` params and its arguments (plus ``ctx``).
    order: module order for the neural graph when names do not sort in forward order.
    apply_fn, example_input: the model's forward and an input batch of one, as for
      :func:`~optax_nowcast.predictors.nino`: each element's edge type is then read from the graph traced
      from ``apply_fn(params, *example_input)`` (:func:`optax_nowcast.graph_trace.trace_graph`), so that
      models whose parameter names cannot express their graph (residual blocks, normalisation layers,
      ``nn.scan``) are predicted too. Without them the types come from the parameter names
      (:func:`optax_nowcast.graphs.neural_graph`).
    chunk: parameter elements per MLP call (:func:`~optax_nowcast.predictors.base.map_rows`): ``"auto"``
      is 1024 on CPU (cache-sized: 1.2-2x faster jumps there, ``benchmarks/results/chunk_speed.md``)
      and one call per parameter tensor elsewhere; ``None``: one call per parameter tensor.
  """
  rows = row_chunk(chunk, 1024)
  model_params, config = weights_io.resolve(weights, model_params, config, load_official_wnn_plus,
                                            wnn_plus_template, "WNNPlus arguments plus 'ctx'",
                                            default="wnn_plus")
  ctx = int(config.pop("ctx", 5))
  model = WNNPlus(**config)
  cache: dict[tuple, list] = {}

  args = graph_trace.forward_args("wnn_plus", apply_fn, example_input)

  def graph(params) -> graphs_lib.NeuralGraph:
    if args is None:
      try:
        return graphs_lib.neural_graph(params, order)
      except ValueError as e:
        raise ValueError(f"wnn_plus: {e} Or pass apply_fn= and example_input= (a batch of one) to read "
                         "the edge types from the forward pass instead of the parameter names.") from e
    g = graph_trace.trace_graph(apply_fn, params, *args, allow_partial=True)
    if g.uncovered:
      raise ValueError(f"wnn_plus: the graph traced from apply_fn does not express {', '.join(g.uncovered)}, "
                       "so WNN+ has no edge type for their elements. Use predictors.nino(apply_fn=..., "
                       "example_input=..., fallback=predictors.linefit_plus()) or linefit_plus() for this "
                       "model.")
    return g

  def init(params):
    cache[tuple(np.shape(x) for x in jax.tree.leaves(params))] = element_edge_types(graph(params))
    return ()

  def predict(history, times, k, state):
    del times
    leaves, treedef = jax.tree.flatten(history)
    key = tuple(np.shape(x)[1:] for x in leaves)
    if key not in cache:
      raise ValueError("wnn_plus: predict got a history whose parameters init never saw.")
    types = cache[key]
    if leaves[0].shape[0] != ctx:
      raise ValueError(f"wnn_plus takes ctx={ctx} states, the history has {leaves[0].shape[0]}.")
    scaled, mu, sigma = scale_history(leaves)
    step = lambda x, t: x[:, -1] + model.apply(model_params, x, t, k)
    rows_in = [(x.reshape(ctx, -1).T, t.reshape(-1)) for x, t in zip(scaled, types, strict=True)]
    moved = _rows_per_leaf(step, rows_in, rows)
    out = [(y * s + m).reshape(h.shape[1:]).astype(h.dtype)
           for y, h, m, s in zip(moved, leaves, mu, sigma, strict=True)]
    return jax.tree.unflatten(treedef, out), state

  return Predictor(init=init, predict=full_precision(predict), name="wnn_plus", min_ctx=ctx)


# ---------------------------------------------------------------------------------------------- WNN


class _Stream(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dense(64)(x)
    c = nn.relu(nn.Dense(8)(h))
    xi1, xi2, xi3 = (nn.Dense(64, name=f"xi{i}")(c) for i in (1, 2, 3))
    h = xi1 * jnp.exp(xi2 * h) + xi3
    return nn.leaky_relu(nn.Dense(32)(h), 0.3)


class WNN(nn.Module):
  """Jang et al.'s weight nowcaster network: ``(x (..., 5), d (..., 4)) -> y (...)`` in ``(-1, 1)``."""

  @nn.compact
  def __call__(self, x: jax.Array, d: jax.Array) -> jax.Array:
    h = jnp.concatenate([_Stream(name="states")(x), _Stream(name="diffs")(d)], axis=-1)
    return jnp.tanh(nn.Dense(1)(h))[..., 0]


def wnn_template(config: Mapping[str, Any]) -> Any:
  """The structure of WNN's params (one :class:`WNN` per kind: conv, dense, bias)."""
  one = WNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
  return {k: one for k in ("conv", "dense", "bias")}


def wnn_normalise(w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The authors' normalisation of ``(..., 5)`` trajectories: ``(x, d, scale)`` (module docstring)."""
  w = w.astype(jnp.float32)
  ell = w - w[..., :1]
  scale = 2.0 * (ell.max(-1) - ell.min(-1) + 1e-8 + 1e-5)
  x = ell / scale[..., None]
  return x, x[..., 1:] - x[..., :-1], scale


def wnn_denormalise(w_last: jax.Array, y: jax.Array, scale: jax.Array) -> jax.Array:
  return w_last.astype(jnp.float32) + y * scale


def wnn_kind(shape: Sequence[int]) -> str:
  """Which of the three models a parameter uses: ``conv`` (4-D), ``dense`` (2-D or 3-D), ``bias`` (1-D)."""
  return {4: "conv", 2: "dense", 3: "dense"}.get(len(shape), "bias")


def wnn(params_by_kind: Mapping[str, Any] | str | os.PathLike | None = None, *,
        chunk: int | str | None = "auto") -> Predictor:
  """The WNN predictor from three sets of :class:`WNN` params (``conv``, ``dense``, ``bias``).

  ``params_by_kind`` is a dict of the three, a ``.msgpack`` file from ``python -m optax_nowcast.metatrain
  train --predictor wnn``, or ``None`` for the weights shipped in ``optax_nowcast/pretrained``.
  Use with ``ctx=5`` and ``horizon=5`` (WNN always jumps the 5 intervals it was trained for).
  ``chunk``: coordinates per model call (:func:`~optax_nowcast.predictors.base.map_rows`); ``"auto"`` is
  2048 on CPU (1.3-3x faster jumps there, ``benchmarks/results/chunk_speed.md``) and one call per parameter
  tensor elsewhere, as with ``None``.
  """
  rows = row_chunk(chunk, 2048)
  if params_by_kind is None or isinstance(params_by_kind, str | os.PathLike):
    path = weights_io.shipped_path("wnn") if params_by_kind is None else params_by_kind
    params_by_kind = weights_io.read(path, wnn_template, expect="wnn")[0]
  missing = {"conv", "dense", "bias"} - set(params_by_kind)
  if missing:
    raise ValueError(f"wnn needs params for the kinds {sorted(missing)} too (conv, dense, bias).")
  model = WNN()

  def predict(history, times, k, state):
    del times, k
    leaves, treedef = jax.tree.flatten(history)
    for h in leaves:
      if h.shape[0] != 5:
        raise ValueError(f"wnn takes ctx=5 states, got {h.shape[0]}.")
    out: list[Any] = [None] * len(leaves)
    for kind in ("conv", "dense", "bias"):  # one batch of coordinates per model
      ix = [i for i, h in enumerate(leaves) if wnn_kind(h.shape[1:]) == kind]
      if not ix:
        continue

      def step(w, kind=kind):
        x, d, scale = wnn_normalise(w)
        return wnn_denormalise(w[:, -1], model.apply(params_by_kind[kind], x, d), scale)

      moved = _rows_per_leaf(step, [(leaves[i].reshape(5, -1).T,) for i in ix], rows)
      for i, y in zip(ix, moved, strict=True):
        out[i] = y.reshape(leaves[i].shape[1:]).astype(leaves[i].dtype)
    return jax.tree.unflatten(treedef, out), state

  return Predictor(init=lambda p: (), predict=full_precision(predict), name="wnn", min_ctx=5)


__all__ = ["WNN", "WNNPlus", "element_edge_types", "load_official_wnn_plus", "wnn", "wnn_denormalise",
           "wnn_kind", "wnn_normalise", "wnn_plus", "wnn_plus_template", "wnn_template"]
