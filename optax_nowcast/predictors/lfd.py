r"""LFD-2 weight farcasting (Shou et al.) and its linear baselines LFN, LFL, LFS.

One linear map shared by every coordinate turns a few observed states of a weight into its next ``m``
states at once (direct multi-step):

.. math::

  [\hat w_{n+1}, \dots, \hat w_{n+m}] = [w_{s_1}, \dots, w_{s_r}] \, A + b,
  \qquad A \in \mathbb{R}^{r \times m},

with inputs ``[w_0, w_n]`` for **LFD-2** (first and latest state: ``r = 2``), all ``n + 1`` states for
**LFN**, ``[w_n]`` for **LFL**, and ``[w_n, w_{0.7n}, w_{0.4n}, w_0]`` for **LFS**. Training minimises

.. math::

  \operatorname{mean}|\hat y - y| + \beta \, \operatorname{mean}_{seq}\,
  \operatorname{relu}\Big(\sum_i |\hat w_{n+m,i} - \hat w_{n+m-1,i}| - \sum_i |w_{1,i} - w_{0,i}|\Big),

the second term (``L_grad``, sums over a sequence's coordinates ``i``) keeps the last predicted step
smaller than the first observed one (optimisers slow down). Proposition 1 of the paper: if every
coordinate follows an affine recurrence ``w_{t+1} = c w_t + d``, then ``w_{n+j}`` is an exact linear
function of ``[w_0, w_n]``, so a fitted ``2 x m`` map forecasts it exactly (tested).

LFD-2 needs only the initial and the latest state: :func:`optax_nowcast.farcast` keeps one extra copy of
the parameters (the anchor), plus the parameters themselves: 2 copies instead of ``ctx``.

>>> import jax.numpy as jnp
>>> spec = lfd_spec("lfd2", n=20, m=180)
>>> spec.inputs, init_lfd(spec)["A"].shape
((0, 20), (2, 180))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import weights_io
from optax_nowcast.predictors.base import Predictor, full_precision


@dataclasses.dataclass(frozen=True)
class LFDSpec:
  """Which observed states (indices into ``0..n``) feed the linear map, and how many steps come out."""

  kind: str
  n: int
  m: int
  inputs: tuple[int, ...]


def lfd_spec(kind: str, n: int = 20, m: int = 180) -> LFDSpec:
  """The inputs of ``kind``: lfd2 ``[w_0, w_n]``, lfn all states, lfl ``[w_n]``, lfs
  ``[w_n, w_.7n, w_.4n, w_0]``."""
  if not (isinstance(n, int) and n >= 1 and isinstance(m, int) and m >= 1):
    raise ValueError(f"n and m must be positive ints (observed steps, predicted steps), got n={n}, m={m}.")
  inputs = {"lfd2": (0, n), "lfn": tuple(range(n + 1)), "lfl": (n,),
            "lfs": (n, int(round(0.7 * n)), int(round(0.4 * n)), 0)}
  if kind not in inputs:
    raise ValueError(f"kind must be one of {sorted(inputs)}, got {kind!r}.")
  return LFDSpec(kind, n, m, inputs[kind])


def init_lfd(spec: LFDSpec) -> dict[str, jax.Array]:
  """Starts at "repeat the latest state": A maps w_n to every output, b = 0."""
  a = np.zeros((len(spec.inputs), spec.m), np.float32)
  a[spec.inputs.index(spec.n), :] = 1.0
  return {"A": jnp.asarray(a), "b": jnp.zeros((spec.m,), jnp.float32)}


def apply_lfd(params, spec: LFDSpec, states: jax.Array) -> jax.Array:
  """``states`` ``(..., n + 1)`` (observed trajectory per coordinate) -> ``(..., m)`` predictions."""
  x = states[..., jnp.asarray(spec.inputs)]
  return x @ params["A"] + params["b"]


def lfd_loss(params, spec: LFDSpec, x: jax.Array, y: jax.Array, beta: float) -> jax.Array:
  """Mean L1 + beta * L_grad for sequences ``x`` ``(S, d, n + 1)`` and targets ``y`` ``(S, d, m)``."""
  y_hat = apply_lfd(params, spec, x)
  l1 = jnp.mean(jnp.abs(y_hat - y))
  last_step = jnp.sum(jnp.abs(y_hat[..., -1] - y_hat[..., -2]), axis=-1) if spec.m > 1 else 0.0
  first_step = jnp.sum(jnp.abs(x[..., 1] - x[..., 0]), axis=-1)
  l_grad = jnp.mean(jax.nn.relu(last_step - first_step))
  return l1 + beta * l_grad


class TrainResult(NamedTuple):
  params: dict[str, jax.Array]
  best_val_mae: float
  steps: int


def train_lfd(spec: LFDSpec, train: np.ndarray, val: np.ndarray, *, beta: float = 1e-6,
              learning_rate: float = 5e-3, batch_size: int = 32, max_steps: int = 3000,
              eval_every: int = 50, patience: int = 10, seed: int = 0) -> TrainResult:
  """Fits LFD-2 (or a baseline) on trajectories ``(S, d, T)`` with ``T >= n + 1 + m`` (paper's recipe).

  Adam, minibatches of ``batch_size`` sequences, early stopping on the validation MAE (checked every
  ``eval_every`` steps, stopping after ``patience`` checks without improvement); returns the best params.
  """
  n, m = spec.n, spec.m
  if train.shape[-1] < n + 1 + m or val.shape[-1] < n + 1 + m:
    raise ValueError(f"trajectories need at least n + 1 + m = {n + 1 + m} states, got {train.shape[-1]} "
                     f"and {val.shape[-1]}.")
  xt, yt = jnp.asarray(train[..., : n + 1]), jnp.asarray(train[..., n + 1: n + 1 + m])
  xv, yv = jnp.asarray(val[..., : n + 1]), jnp.asarray(val[..., n + 1: n + 1 + m])
  tx = optax.adam(learning_rate)
  params = init_lfd(spec)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, idx):
    g = jax.grad(lfd_loss)(params, spec, xt[idx], yt[idx], beta)
    u, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, u), opt_state

  val_mae = jax.jit(lambda p: jnp.mean(jnp.abs(apply_lfd(p, spec, xv) - yv)))
  rng = np.random.default_rng(seed)
  best, best_params, bad, s = float(val_mae(params)), params, 0, 0
  for s in range(1, max_steps + 1):
    idx = rng.choice(xt.shape[0], min(batch_size, xt.shape[0]), replace=False)
    params, opt_state = step(params, opt_state, idx)
    if s % eval_every == 0:
      mae = float(val_mae(params))
      if mae < best - 1e-12:
        best, best_params, bad = mae, params, 0
      else:
        bad += 1
        if bad >= patience:
          break
  return TrainResult(best_params, best, s)


def lfd_template(config: dict[str, Any]) -> dict[str, jax.Array]:
  """The structure of an LFD map's params for ``config`` (``kind``, ``n``, ``m``)."""
  return init_lfd(lfd_spec(config["kind"], config["n"], config["m"]))


def lfd2(params: Any = None, spec: LFDSpec | None = None) -> Predictor:
  """LFD-2 as a predictor for :func:`optax_nowcast.farcast` (or ``nowcast`` with ``ctx=2``).

  The history holds ``[w_0, w_n]`` (``times = [-n, 0]`` in the map's units); ``k`` in ``1..m`` picks the
  output ``w_{n+k}``. Only LFD-2 (``kind="lfd2"``) fits in two states. ``params`` is ``{"A", "b"}`` with
  ``spec``, a ``.msgpack`` file from ``python -m optax_nowcast.metatrain train --predictor lfd2`` (the spec
  comes from its ``.json``), or ``None`` for the weights shipped in ``optax_nowcast/pretrained`` (trained on
  real-task trajectories saved every 200 steps: ``n = 5`` units, ``m = 40``; use ``unit=200``).
  """
  if params is None or isinstance(params, str | os.PathLike):
    path = weights_io.shipped_path("lfd2") if params is None else params
    params, cfg = weights_io.read(path, lfd_template, expect="lfd2")
    spec = lfd_spec(cfg["kind"], cfg["n"], cfg["m"])
  if spec is None:
    raise ValueError("lfd2(params, spec): spec= is needed with params given as arrays "
                     "(lfd_spec('lfd2', n, m)).")
  if spec.kind != "lfd2":
    raise ValueError(f"only LFD-2 needs just [w_0, w_n]; {spec.kind} needs {len(spec.inputs)} states.")
  a = jnp.asarray(params["A"], jnp.float32)
  b = jnp.asarray(params["b"], jnp.float32)

  def predict(history, times, k, state):
    kk = jnp.clip(jnp.asarray(k, jnp.int32), 1, spec.m) - 1
    col_a = jax.lax.dynamic_index_in_dim(a, kk, axis=1, keepdims=False)  # (2,)
    col_b = jax.lax.dynamic_index_in_dim(b, kk, axis=0, keepdims=False)

    def leaf(h):
      out = col_a[0] * h[0].astype(jnp.float32) + col_a[1] * h[-1].astype(jnp.float32) + col_b
      return out.astype(h.dtype)

    return jax.tree.map(leaf, history), state

  return Predictor(init=lambda p: (), predict=full_precision(predict), name="lfd2", min_ctx=2)


__all__ = ["LFDSpec", "TrainResult", "apply_lfd", "init_lfd", "lfd2", "lfd_loss", "lfd_spec", "lfd_template",
           "train_lfd"]
