"""The jump gate shared by ``nowcast`` and ``farcast``: which leaves are stored, and whether a prediction
may replace the parameters.

A prediction :math:`\\hat\\theta` passes the gate when every leaf is finite and, with ``max_jump_ratio``
set, when the jump is not absurdly long for the recent movement :math:`m` of the parameters:

.. math:: \\lVert \\hat\\theta - \\theta \\rVert_2 \\le r \\cdot \\max(k, 1) \\cdot
   \\frac{\\lVert \\theta_{\\mathrm{new}} - \\theta_{\\mathrm{old}} \\rVert_2}{\\mathrm{span}},

with ``span`` the number of units (intervals) between the oldest and the newest stored state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def is_float(x: Any) -> bool:
  """Whether a leaf is stored and predicted (float leaves only; counters and flags pass through)."""
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def float_params(params: Any) -> Any:
  """``params`` with every non-float leaf replaced by ``optax.MaskedNode()`` (what predictors see)."""
  return jax.tree.map(lambda p: p if is_float(p) else optax.MaskedNode(), params)


def _f32(x: Any) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


class Gate(NamedTuple):
  """A gated jump: ``deltas[i] = prediction[i] - params[i]`` in float32, and whether it may be applied."""

  deltas: list[jax.Array]
  ok: jax.Array


def jump_gate(prediction: Sequence[jax.Array], params: Sequence[Any], k: jax.Array, *,
              max_jump_ratio: float | None, recent: Callable[[], tuple[Sequence[Any], Sequence[Any]]],
              span: float) -> Gate:
  """Checks a prediction (a list of leaves, matching ``params``) and returns the jump it asks for.

  ``recent()`` returns the oldest and the newest stored states (lists of leaves; only called when
  ``max_jump_ratio`` is set), ``span`` units apart; ``k`` is the horizon in those units.

  >>> import jax.numpy as jnp
  >>> recent = lambda: ([jnp.zeros(2)], [jnp.ones(2)])  # moved by (1, 1) over 1 unit
  >>> gate = jump_gate([jnp.full(2, 3.0)], [jnp.ones(2)], jnp.array(2), max_jump_ratio=1.0,
  ...                  recent=recent, span=1)
  >>> gate.deltas[0].tolist(), bool(gate.ok)  # a jump of (2, 2) = 2 units of (1, 1): allowed
  ([2.0, 2.0], True)
  >>> bool(jump_gate([jnp.array([jnp.nan, 0.0])], [jnp.ones(2)], 2, max_jump_ratio=None,
  ...                recent=recent, span=1).ok)
  False
  """
  deltas = [_f32(x) - _f32(p) for x, p in zip(prediction, params, strict=True)]
  ok = jnp.array(True)
  for x in prediction:
    ok &= jnp.all(jnp.isfinite(x))
  if max_jump_ratio is not None:
    oldest, newest = recent()
    jump_sq = sum(jnp.sum(jnp.square(d)) for d in deltas)
    move_sq = sum(jnp.sum(jnp.square(_f32(b) - _f32(a))) for a, b in zip(oldest, newest, strict=True))
    limit = max_jump_ratio * jnp.maximum(k, 1).astype(jnp.float32) / span
    ok &= jnp.sqrt(jump_sq) <= limit * jnp.sqrt(move_sq)
  return Gate(deltas, ok)
