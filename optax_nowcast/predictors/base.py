"""The predictor interface shared by every nowcasting method.

A predictor is a pair of pure functions, in the spirit of an optax transformation:

* ``init(params) -> predictor_state``: any state the predictor keeps (weights, an RNG key, static
  index maps built once from the parameter shapes). ``params`` has the structure of the model's
  parameters with non-float leaves replaced by ``optax.MaskedNode()``.
* ``predict(history, times, k, predictor_state) -> (prediction, predictor_state)``:

  - ``history``: pytree like ``params`` whose leaves have a leading axis ``ctx``, oldest state first,
    stored in the history dtype (compute in float32 and let ``nowcast`` cast back);
  - ``times``: float32 array ``(ctx,)``, the step of each state relative to the latest one, divided by
    ``interval``: ``[-(ctx-1), ..., -1, 0]`` when states are recorded at a regular interval;
  - ``k``: int32 scalar, the horizon in intervals: predict the state at ``times[-1] + k`` (a float32
    scalar for predictors with ``fractional_k=True``, when ``nowcast`` measures time in cumulative
    learning rate and the horizon is not a whole number of intervals);
  - returns a pytree with the structure of one state (``history`` without the leading axis).

``predict`` is traced inside ``jax.jit``; it must not branch in Python on traced values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PredictorState = Any
History = Any


class Predictor(NamedTuple):
  """A nowcasting method: ``init`` and ``predict`` (see the module docstring)."""

  init: Callable[[Any], PredictorState]
  predict: Callable[[History, jax.Array, jax.Array, PredictorState], tuple[Any, PredictorState]]
  name: str = "predictor"
  min_ctx: int = 2
  fractional_k: bool = False  # predict accepts a float32 horizon (else nowcast rounds it)


def full_precision(predict: Callable[..., Any]) -> Callable[..., Any]:
  """``predict`` with its matrix products and convolutions at full float32 precision.

  On GPUs (TensorFloat-32) and TPUs (bfloat16 passes) a float32 product runs by default with a
  10-bit or 8-bit mantissa, a relative error of about ``1e-3``: enough to make an exact method written
  with products inexact (LFD's linear map ``apply_lfd``, Proposition 1) and to move a learned predictor
  off the model it was trained as. A prediction becomes the parameters, and a jump is rare and small
  next to training, so ``nowcast``, ``farcast`` and every shipped predictor trace ``predict`` under
  ``jax.default_matmul_precision("highest")``; the training step keeps the precision it was given. No
  effect on CPU, which computes in float32.

  >>> import jax, jax.numpy as jnp
  >>> f = full_precision(lambda a, b: a @ b)
  >>> "HIGHEST" in jax.jit(f).lower(jnp.ones((2, 2)), jnp.ones((2, 2))).as_text()
  True
  """

  @functools.wraps(predict)
  def wrapped(*args: Any, **kwargs: Any) -> Any:
    with jax.default_matmul_precision("highest"):
      return predict(*args, **kwargs)

  return wrapped


def no_state(params: Any) -> tuple[()]:
  """``init`` of a predictor without state."""
  del params
  return ()


def row_chunk(chunk: int | str | None, cpu_default: int) -> int | None:
  """Rows per :func:`map_rows` chunk: ``"auto"`` is ``cpu_default`` on CPU and whole arrays elsewhere."""
  if chunk == "auto":
    return cpu_default if jax.default_backend() == "cpu" else None
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"chunk must be a positive int, None (all rows at once) or 'auto', got {chunk!r}.")
  return chunk


def map_rows(fn: Callable[..., jax.Array], *arrays: jax.Array, chunk: int | None) -> jax.Array:
  """``fn(*arrays)`` for a row-wise ``fn``, computed ``chunk`` rows at a time (``jax.lax.map``).

  Per-element predictors (WNN, WNN+) run an MLP on every parameter element: on a CPU the ``(n, hidden)``
  activations of a whole model leave the cache between layers, and chunks of one or two thousand rows
  that stay in it run 1.2-3x faster (``benchmarks/results/chunk_speed.md``). On accelerators pass
  ``chunk=None``: one launch over all rows. Rows are padded to a multiple of ``chunk`` and cut back.

  >>> import jax.numpy as jnp
  >>> map_rows(lambda x: 2 * x[:, 0], jnp.arange(10.0).reshape(5, 2), chunk=2).tolist()
  [0.0, 4.0, 8.0, 12.0, 16.0]
  """
  n = arrays[0].shape[0]
  if chunk is None or n <= chunk:
    return fn(*arrays)
  pad = (-n) % chunk
  blocks = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:])
                 for a in arrays)
  out = jax.lax.map(lambda xs: fn(*xs), blocks)
  return out.reshape(-1, *out.shape[2:])[:n]


def per_coordinate(fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
                   ) -> Callable[[History, jax.Array, jax.Array], Any]:
  """Lifts a predictor of one scalar trajectory to a whole history pytree.

  ``fn(trajectory (ctx,), times (ctx,), k) -> scalar`` is ``jax.vmap``-ed over every coordinate of
  every leaf; the computation is done in float32 and the result cast back to the history dtype.

  >>> import jax.numpy as jnp
  >>> last = per_coordinate(lambda w, t, k: w[-1])
  >>> last({"w": jnp.arange(6.0).reshape(3, 2)}, jnp.arange(3.0), 1)["w"].tolist()
  [4.0, 5.0]
  """
  vfn = jax.vmap(fn, in_axes=(1, None, None))

  def apply(history, times, k):
    def leaf(h):
      flat = h.reshape(h.shape[0], -1).astype(jnp.float32)
      return vfn(flat, times, k).reshape(h.shape[1:]).astype(h.dtype)
    return jax.tree.map(leaf, history)

  return apply
