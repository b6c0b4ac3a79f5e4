"""Farcasting: jump from two states only, the anchor ``w_0`` and the current parameters ``w_n`` (LFD-2).

``farcast(predictor, n=..., horizon=...)`` keeps **one** stored copy of the parameters (the anchor), so
with the parameters themselves the memory is two copies, against ``ctx`` for ``nowcast``. The call that
receives the parameters ``unit * n`` steps after the anchor calls the predictor on ``[anchor, params]``
(``times = [-n, 0]`` in units of ``unit`` steps) and jumps ``k`` units ahead; the parameters after the jump
become the next anchor. Non-finite predictions (and, with ``max_jump_ratio``, absurdly large jumps) are
skipped and counted, as in ``nowcast``.

>>> import jax.numpy as jnp, optax, optax_nowcast as onc
>>> from optax_nowcast.predictors.lfd import lfd2, lfd_spec
>>> spec = lfd_spec("lfd2", n=4, m=6)
>>> # A = [[-k/n], [1 + k/n]] extrapolates the line through w_0 and w_n: w_{n+k} = w_n + k (w_n - w_0) / n
>>> params_lfd = {"A": jnp.stack([-jnp.arange(1, 7) / 4, 1 + jnp.arange(1, 7) / 4]), "b": jnp.zeros(6)}
>>> tx = optax.chain(optax.sgd(1.0), onc.farcast(lfd2(params_lfd, spec), n=4, horizon=6))
>>> params = {"w": jnp.array(0.0)}
>>> state = tx.init(params)
>>> for _ in range(5):  # w moves +1 per step; the 5th call sees w_4 = 4 and jumps to w_10
...   updates, state = tx.update({"w": jnp.array(-1.0)}, state, params)
...   params = optax.apply_updates(params, updates)
>>> float(params["w"])
10.0
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import schedules as schedules_lib
from optax_nowcast._checks import check_int, check_positive_or_none
from optax_nowcast._gate import float_params, is_float, jump_gate
from optax_nowcast.predictors.base import Predictor, full_precision


class FarcastState(NamedTuple):
  """State of :func:`farcast` (find it in any chain with ``find_nowcast_state``).

  Attributes:
    count: int32, number of ``update`` calls so far.
    anchor: one copy of the float parameters (``MaskedNode`` elsewhere), the state ``w_0``.
    anchor_step: int32, the step of the anchor.
    n_jumps: int32, jumps applied.
    n_rejected: int32, jumps skipped (non-finite or too long).
    last_jump_step: int32, step of the last applied jump, ``-1`` before the first.
    predictor_state: whatever the predictor keeps.
  """

  count: jax.Array
  anchor: Any  # one copy of the float parameters (MaskedNode elsewhere)
  anchor_step: jax.Array
  n_jumps: jax.Array
  n_rejected: jax.Array
  last_jump_step: jax.Array
  predictor_state: Any


def farcast(predictor: Predictor, *, n: int, horizon: int | schedules_lib.HorizonSchedule, unit: int = 1,
            history_dtype: Any = None,
            max_jump_ratio: float | None = None) -> optax.GradientTransformationExtraArgs:
  """Jumps every ``n * unit`` steps from ``[anchor, params]`` to ``k = horizon`` units ahead.

  Args:
    predictor: a two-state predictor, e.g. ``predictors.lfd.lfd2(params, spec)``.
    n: units between the anchor and the state the jump starts from (LFD-2's ``n``).
    horizon: units to jump ahead (``1..m`` for LFD-2): an int, or a schedule over the jumps such as
      ``schedules.k_decay(40, total_steps=...)`` (the period is ``n * unit`` steps).
    unit: optimizer steps per unit (1 for the paper's synthetic sequences).
    history_dtype: dtype of the anchor copy (e.g. ``jnp.bfloat16``); ``None`` keeps the params' dtypes.
    max_jump_ratio: reject an absurdly large jump, as in ``nowcast``: when the global norm of
      ``prediction - params`` exceeds ``max_jump_ratio * max(k, 1) * ||w_n - w_0|| / n`` (``max_jump_ratio``
      times the jump a straight line through the anchor and the parameters would make). ``None``
      (default) accepts every finite prediction. A rejected jump keeps the base update, is counted in
      ``n_rejected``, and the parameters still become the next anchor.
  """
  if not isinstance(predictor, Predictor):
    raise ValueError(f"predictor must be an optax_nowcast Predictor, got {type(predictor).__name__}.")
  n = check_int("n", n, 1, "n is the number of units between the anchor and the jump.")
  if isinstance(horizon, int | np.integer) and not isinstance(horizon, bool):
    check_int("horizon", horizon, 1, "horizon is how many units ahead the jump lands.")
  unit = check_int("unit", unit, 1, "unit is the number of optimizer steps per unit of n and horizon.")
  check_positive_or_none("max_jump_ratio", max_jump_ratio, "10.0")
  period = n * unit
  horizon_schedule = schedules_lib.resolve_horizon(horizon, n, schedules_lib.ConstantPeriod(period))

  def init_fn(params):
    def anchor_leaf(p):
      if not is_float(p):
        return optax.MaskedNode()
      return jnp.zeros(jnp.shape(p), history_dtype or jnp.result_type(p))

    zero = lambda: jnp.zeros((), jnp.int32)
    return FarcastState(count=zero(), anchor=jax.tree.map(anchor_leaf, params), anchor_step=zero(),
                        n_jumps=zero(), n_rejected=zero(), last_jump_step=jnp.full((), -1, jnp.int32),
                        predictor_state=predictor.init(float_params(params)))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("farcast needs the current parameters: call tx.update(updates, state, params).")
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    float_ix = [i for i, p in enumerate(p_leaves) if is_float(p)]
    a_leaves, a_treedef = jax.tree.flatten(state.anchor)
    step = state.count
    a_leaves = jax.lax.cond(step == state.anchor_step,
                            lambda a: [jnp.asarray(p_leaves[i]).astype(x.dtype) for x, i in zip(a, float_ix,
                                                                                                 strict=True)],
                            lambda a: list(a), a_leaves)
    is_jump = step == state.anchor_step + period

    def jump(a_leaves, pstate):
      hist = [jnp.stack([a, jnp.asarray(p_leaves[i]).astype(a.dtype)]) for a, i in zip(a_leaves, float_ix,
                                                                                       strict=True)]
      times = jnp.asarray([-float(n), 0.0], jnp.float32)
      k = horizon_schedule(state.n_jumps + state.n_rejected)
      pred, pstate = full_precision(predictor.predict)(jax.tree.unflatten(a_treedef, hist), times, k, pstate)
      x = [p_leaves[i] for i in float_ix]
      gate = jump_gate(jax.tree.leaves(pred), x, k, max_jump_ratio=max_jump_ratio, span=n,
                       recent=lambda: ([h[0] for h in hist], [h[1] for h in hist]))
      return gate.deltas, gate.ok, pstate

    def no_jump(a_leaves, pstate):
      return [jnp.zeros(jnp.shape(p_leaves[i]), jnp.float32) for i in float_ix], jnp.array(False), pstate

    deltas, ok, pstate = jax.lax.cond(is_jump, jump, no_jump, a_leaves, state.predictor_state)
    applied = is_jump & ok
    out = list(u_leaves)
    for d, i in zip(deltas, float_ix, strict=True):
      out[i] = jnp.where(applied, d.astype(jnp.result_type(u_leaves[i])), u_leaves[i])
    new_state = FarcastState(
        count=step + 1, anchor=jax.tree.unflatten(a_treedef, a_leaves),
        anchor_step=jnp.where(is_jump, step + 1, state.anchor_step),
        n_jumps=state.n_jumps + applied.astype(jnp.int32),
        n_rejected=state.n_rejected + (is_jump & ~ok).astype(jnp.int32),
        last_jump_step=jnp.where(applied, step, state.last_jump_step), predictor_state=pstate)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["FarcastState", "farcast"]
