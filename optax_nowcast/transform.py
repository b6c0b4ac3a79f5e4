r"""``nowcast``: an optax transformation that periodically jumps the parameters ahead.

Steps are counted as optax counts them: the update call made with ``state.count == s`` receives the
parameters :math:`\theta_s` reached after ``s`` updates. Between jumps ``nowcast`` passes the base
optimizer's updates through untouched. For each scheduled jump step ``J`` it records, in a ring buffer,
the ``ctx`` states :math:`\theta_{J-(ctx-1)\Delta}, \dots, \theta_{J-\Delta}, \theta_J`
(:math:`\Delta` = ``interval``), each when it arrives as ``params``. In the update call that receives
:math:`\theta_J` a predictor maps the ``ctx`` states to the state ``k`` intervals ahead,

.. math:: \hat\theta = f\big(\theta_{J-(ctx-1)\Delta}, \dots, \theta_J;\ k\big)
   \approx \theta_{J + k\Delta},

and ``nowcast`` returns :math:`\hat\theta - \theta_J` instead of the base update, so that
``optax.apply_updates`` lands on the prediction: :math:`\theta_{J+1} = \hat\theta`. The base
optimizer's state (Adam's moments and step count) is kept, as in WNN (Jang et al., 2023) and NiNo
(Knyazev et al., 2025); the gradient of that call still feeds those moments. Predicted states are
not recorded: every jump uses ``ctx`` fresh states.

With the default period ``ctx * interval`` this is the WNN/NiNo protocol: with ``interval=200,
ctx=5`` the states after 200, 400, ..., 1000 steps are recorded and the 1001st update is the jump;
then 1200, ..., 2000 and the 2001st update, and so on. (The official NiNo code predicts inside its
1000th step, from the state that step reaches; we take that state as the next call's ``params``,
which lets the non-jump steps stay fused and costs one extra gradient evaluation per jump.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import schedules as schedules_lib
from optax_nowcast._checks import check_int, check_positive_or_none
from optax_nowcast.predictors.base import Predictor, full_precision

__all__ = ["NowcastState", "find_nowcast_state", "nowcast"]


class NowcastState(NamedTuple):
  """State of :func:`nowcast` (find it in any chain with :func:`find_nowcast_state`).

  >>> import jax.numpy as jnp, optax, optax_nowcast as onc
  >>> state = onc.nowcast(onc.predictors.linefit(), interval=10, ctx=3).init({"w": jnp.zeros(4)})
  >>> state.history["w"].shape, int(state.count), int(state.n_jumps)
  ((3, 4), 0, 0)

  Attributes:
    count: int32, number of ``update`` calls so far (the step reached after the last update).
    history: pytree like ``params``; each float leaf has shape ``(ctx, *param.shape)`` in the history
      dtype, non-float leaves are ``optax.MaskedNode()``. A ring buffer: slot ``i`` holds the state of
      step ``slot_steps[i]``.
    slot_steps: int32 ``(ctx,)``, the step of the state in each slot, ``-1`` while empty.
    next_slot: int32, the slot the next state is written to.
    filled: int32, states recorded since the last jump (capped at ``ctx``).
    n_jumps: int32, jumps applied.
    n_rejected: int32, jumps skipped because the prediction was not finite.
    last_jump_step: int32, step of the last applied jump, ``-1`` before the first.
    predictor_state: whatever the predictor keeps.
    loss_ema: float32, running mean of the ``value`` (loss) passed to ``update`` (rollback only).
    pre_jump_loss: float32, ``loss_ema`` when the last jump was made.
    post_jump_loss: float32, running mean of the losses since the last jump, within the rollback window.
    n_rollbacks: int32, jumps undone because the loss rose.
    horizon_scale: float32, factor on ``k`` (halved by each rollback by default).
  """

  count: jax.Array
  history: Any
  slot_steps: jax.Array
  next_slot: jax.Array
  filled: jax.Array
  n_jumps: jax.Array
  n_rejected: jax.Array
  last_jump_step: jax.Array
  predictor_state: Any
  loss_ema: jax.Array
  pre_jump_loss: jax.Array
  post_jump_loss: jax.Array
  n_rollbacks: jax.Array
  horizon_scale: jax.Array


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)




def _resolve_period(period, ctx: int, interval: int) -> schedules_lib.PeriodSchedule:
  window = ctx * interval
  if period is None:
    period = schedules_lib.ConstantPeriod(window)
  elif isinstance(period, (int, np.integer)) and not isinstance(period, bool):
    period = schedules_lib.ConstantPeriod(int(period))
  elif not isinstance(period, schedules_lib.PeriodSchedule):
    raise ValueError(f"period must be None, an int or a schedules.PeriodSchedule (e.g. "
                     f"schedules.dynamic_period(...)), got {period!r}.")
  if period.min_gap() < window:
    raise ValueError(
        f"period: jumps {period.min_gap()} steps apart are shorter than ctx * interval = {ctx} * "
        f"{interval} = {window}; each jump needs ctx fresh states recorded every interval steps. "
        f"Use a period of at least {window} steps, or lower ctx or interval.")
  return period


def _resolve_horizon(horizon, ctx: int, period) -> schedules_lib.HorizonSchedule:
  if horizon is None:
    horizon = schedules_lib.ConstantHorizon(ctx)
  elif isinstance(horizon, (int, np.integer)) and not isinstance(horizon, bool):
    if horizon < 0:
      raise ValueError(f"horizon must be >= 0 intervals, got {horizon}: the predictor extrapolates "
                       "forward in time. Pass a non-negative int or a schedules.HorizonSchedule.")
    horizon = schedules_lib.ConstantHorizon(int(horizon))
  elif not isinstance(horizon, schedules_lib.HorizonSchedule):
    raise ValueError(f"horizon must be None, an int (intervals) or a schedules.HorizonSchedule "
                     f"(e.g. schedules.k_decay(40, total_steps=...)), got {horizon!r}.")
  return horizon.resolve(period)


def _history_sharding(p) -> jax.sharding.Sharding | None:
  """The history of a ``NamedSharding``-ed parameter: the same layout, the ``ctx`` axis unsharded."""
  if not isinstance(p, jax.Array) or isinstance(p, jax.core.Tracer):
    return None  # under jit, XLA propagates the sharding of the parameters to the history
  sharding = p.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(p) - len(sharding.spec))
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *spec))
  return None


def nowcast(
    predictor: Predictor,
    *,
    interval: int,
    ctx: int = 5,
    period: int | schedules_lib.PeriodSchedule | None = None,
    horizon: int | schedules_lib.HorizonSchedule | None = None,
    history_dtype: Any = None,
    max_jump_ratio: float | None = None,
    rollback_factor: float | None = None,
    rollback_window: int | None = None,
    rollback_shrink: float = 0.5,
    history_memory: str = "device",
) -> optax.GradientTransformationExtraArgs:
  """Periodically replaces the parameters by a predictor's nowcast of their future.

  Place it last in an ``optax.chain``, after the optimizer whose trajectory it extrapolates;
  ``update`` needs ``params``.

  Args:
    predictor: a :class:`~optax_nowcast.predictors.Predictor`, e.g. ``predictors.linefit()``.
    interval: steps between two recorded states (200 in NiNo; an epoch in WNN).
    ctx: number of states the predictor sees (5 in WNN and NiNo).
    period: when to jump: ``None`` for every ``ctx * interval`` steps, an int for a constant period
      in steps, or a schedule such as ``schedules.dynamic_period(...)``. Every gap between jumps must
      be at least ``ctx * interval`` steps.
    horizon: how far to jump, in intervals: an int, a schedule such as
      ``schedules.k_decay(max_k=40, total_steps=10_000)``, or ``None`` for ``ctx`` intervals.
    history_dtype: dtype of the stored states (e.g. ``jnp.bfloat16`` to halve their memory);
      ``None`` keeps each parameter's dtype.
    max_jump_ratio: reject a prediction whose jump is absurdly large: when the global norm of
      ``prediction - params`` exceeds ``max_jump_ratio * max(k, 1) * m``, with ``m`` the recent movement
      per interval (``||state_newest - state_oldest|| / (ctx - 1)`` over the history). ``None``
      (default) accepts every finite prediction. Rejected jumps (and non-finite predictions, always)
      leave the base optimizer's update in place and are counted in ``n_rejected``.
    rollback_factor: undo a jump that made the loss worse (named as future work by NiNo++). Pass the
      loss to ``update`` as ``value=loss`` (as for ``optax.contrib.reduce_on_plateau``). With ``pre`` the
      running mean of the loss before a jump and ``post`` its running mean restarted at the jump (both
      ``m <- 0.9 m + 0.1 loss``), if ``post > rollback_factor * pre`` ``rollback_window`` steps after the
      jump, the parameters return to the pre-jump state (read from the history: no extra copy), the
      horizon of later jumps is multiplied by ``rollback_shrink``, and ``n_rollbacks`` counts it.
      ``None`` (default): no rollback.
    rollback_window: steps after a jump before the check; ``None`` (default): ``min(50, interval // 4)``.
      Jumps, good ones included, often land at a higher loss that the base optimizer brings back down
      within 20-40 steps (FM-16 with NiNo: 5x the pre-jump loss at the jump, 2x over the first 11
      steps, back to it by step ~40), so a short window undoes good jumps. Needs
      ``rollback_window < interval - 1``.
    rollback_shrink: factor on the horizon after each rollback, in ``(0, 1]``.
    history_memory: ``"device"`` (default) or ``"host"``: keep the ``ctx`` stored states in host memory
      (``jax.memory.Space.Host``, pinned host memory on GPU/TPU), so the accelerator holds none of them.
      States travel to the host when recorded and back only for a jump (and a rollback); the jump's
      ``prediction - params`` is then held on the device until it is applied. Needs a backend with host
      memory spaces (CPU, GPU and TPU in current JAX).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; extra keyword arguments to ``update`` are accepted
    and ignored.

  Example:

    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_nowcast as onc
    >>> tx = optax.chain(optax.sgd(0.1), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3))
    >>> params = {"w": jnp.array(0.0)}
    >>> state = tx.init(params)
    >>> for step in range(7):  # constant gradient -1: sgd moves w by +0.1 per step
    ...   updates, state = tx.update({"w": jnp.array(-1.0)}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # states after 2, 4, 6 steps are 0.2, 0.4, 0.6; the 7th update jumps 3 intervals ahead
    >>> round(float(params["w"]), 4)
    1.2
  """
  if not isinstance(predictor, Predictor):
    raise ValueError(f"predictor must be an optax_nowcast.predictors.Predictor (e.g. "
                     f"predictors.linefit()), got {type(predictor).__name__}.")
  interval = check_int("interval", interval, 1,
                       "interval is the number of optimizer steps between recorded states.")
  ctx = check_int("ctx", ctx, max(2, predictor.min_ctx),
                  f"ctx is the number of recorded states the predictor sees; "
                  f"{predictor.name} needs at least {max(2, predictor.min_ctx)}.")
  period_schedule = _resolve_period(period, ctx, interval)
  horizon_schedule = _resolve_horizon(horizon, ctx, period_schedule)
  check_positive_or_none("max_jump_ratio", max_jump_ratio, "10.0")
  check_positive_or_none("rollback_factor", rollback_factor, "1.5")
  if rollback_factor is not None:
    if rollback_window is None:
      rollback_window = min(50, interval // 4)
    rollback_window = check_int("rollback_window", rollback_window, 0,
                                "rollback_window is the number of steps after a jump before the check.")
    if rollback_window >= interval - 1:
      raise ValueError(f"rollback_window ({rollback_window}) must be < interval - 1 ({interval - 1}): the "
                       "pre-jump state is read back from the history before the next recording.")
    if not 0 < rollback_shrink <= 1:
      raise ValueError(f"rollback_shrink must be in (0, 1], got {rollback_shrink!r}.")
  if history_dtype is not None:
    try:
      history_dtype = jnp.dtype(history_dtype)
    except TypeError as e:
      raise ValueError(f"history_dtype must be a float dtype such as jnp.bfloat16, "
                       f"got {history_dtype!r}.") from e
    if not jnp.issubdtype(history_dtype, jnp.floating):
      raise ValueError(f"history_dtype must be a float dtype such as jnp.bfloat16 or None, "
                       f"got {history_dtype}.")

  if history_memory not in ("device", "host"):
    raise ValueError(f"history_memory must be 'device' or 'host', got {history_memory!r}.")
  host = history_memory == "host"
  to_host = lambda x: jax.device_put(x, jax.memory.Space.Host)
  to_device = lambda x: jax.device_put(x, jax.memory.Space.Device)

  def init_fn(params):
    if params is None:
      raise ValueError("nowcast.init needs the parameters (tx.init(params)).")
    if host:
      kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
      if "pinned_host" not in kinds:
        raise ValueError(f"nowcast(history_memory='host') needs a backend with host memory; "
                         f"{jax.default_backend()} has {sorted(kinds)}. Use history_memory='device'.")

    def hist_leaf(p):
      if not _is_float(p):
        return optax.MaskedNode()
      dtype = history_dtype if history_dtype is not None else jnp.result_type(p)
      z = jnp.zeros((ctx,) + jnp.shape(p), dtype, device=_history_sharding(p))
      return to_host(z) if host else z

    masked_params = jax.tree.map(lambda p: p if _is_float(p) else optax.MaskedNode(), params)
    # Every field gets its own buffer so that the state can be donated.
    zero = lambda: jnp.zeros((), jnp.int32)
    return NowcastState(
        count=zero(),
        history=jax.tree.map(hist_leaf, params),
        slot_steps=jnp.full((ctx,), -1, jnp.int32),
        next_slot=zero(),
        filled=zero(),
        n_jumps=zero(),
        n_rejected=zero(),
        last_jump_step=jnp.full((), -1, jnp.int32),
        predictor_state=predictor.init(masked_params),
        loss_ema=jnp.full((), jnp.nan, jnp.float32),
        pre_jump_loss=jnp.full((), jnp.nan, jnp.float32),
        post_jump_loss=jnp.zeros((), jnp.float32),
        n_rollbacks=zero(),
        horizon_scale=jnp.ones((), jnp.float32),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    if rollback_factor is not None and value is None:
      raise ValueError("nowcast(rollback_factor=...) needs the loss: call tx.update(updates, state, params, "
                       "value=loss).")
    if params is None:
      raise ValueError(
          "nowcast needs the current parameters to record their trajectory: call "
          "tx.update(updates, state, params). (Flax TrainState and nnx.Optimizer pass them.)")
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    float_ix = [i for i, p in enumerate(p_leaves) if _is_float(p)]
    h_leaves, h_treedef = jax.tree.flatten(state.history)
    chex.assert_equal(len(h_leaves), len(float_ix))

    step = state.count  # `params` are the state reached after `step` updates
    jump_step, jump_index = period_schedule.next_jump(step)
    to_jump = jump_step - step
    do_record = (to_jump % interval == 0) & (to_jump <= (ctx - 1) * interval)

    def jump(h_leaves, slot_steps, next_slot, pstate):
      order = (next_slot + jnp.arange(ctx)) % ctx  # oldest first
      chrono = [jnp.take(to_device(h) if host else h, order, axis=0) for h in h_leaves]
      steps = slot_steps[order]
      times = (steps - steps[-1]).astype(jnp.float32) / interval
      k = horizon_schedule(jump_index)
      if rollback_factor is not None:
        k = jnp.maximum(1, jnp.round(k * state.horizon_scale)).astype(jnp.int32)
      prediction, new_pstate = full_precision(predictor.predict)(
          jax.tree.unflatten(h_treedef, chrono), times, k, pstate)
      pred_leaves = jax.tree.leaves(prediction)
      chex.assert_equal(len(pred_leaves), len(float_ix))
      finite = jnp.array(True)
      for x in pred_leaves:
        finite &= jnp.all(jnp.isfinite(x))
      if max_jump_ratio is not None:
        f32 = lambda a: jnp.asarray(a).astype(jnp.float32)
        jump_sq = sum(jnp.sum(jnp.square(f32(x) - f32(p_leaves[i])))
                      for x, i in zip(pred_leaves, float_ix, strict=True))
        move_sq = sum(jnp.sum(jnp.square(f32(c[-1]) - f32(c[0]))) for c in chrono)
        limit = max_jump_ratio * jnp.maximum(k, 1).astype(jnp.float32) / (ctx - 1)
        finite &= jnp.sqrt(jump_sq) <= limit * jnp.sqrt(move_sq)
      deltas = [x.astype(jnp.float32) - jnp.asarray(p_leaves[i]).astype(jnp.float32)
                for x, i in zip(pred_leaves, float_ix, strict=True)]
      if host:  # the jump stays on the device until it is applied below
        return list(h_leaves), finite, ~finite, new_pstate, deltas
      # The ring's oldest slot is stale after a jump: it carries the jump (prediction - params)
      # until the update below reads it, so a jump costs no extra parameter copy.
      new_h = [jax.lax.dynamic_update_index_in_dim(h, d.astype(h.dtype), next_slot, 0)
               for h, d in zip(h_leaves, deltas, strict=True)]
      return new_h, finite, ~finite, new_pstate, []

    def no_deltas():
      return [jnp.zeros(jnp.shape(p_leaves[i]), jnp.float32) for i in float_ix] if host else []

    def no_jump(h_leaves, slot_steps, next_slot, pstate):
      return list(h_leaves), jnp.array(False), jnp.array(False), pstate, no_deltas()

    def record(h_leaves, slot_steps, next_slot, filled, pstate):
      new_h = []
      for h, i in zip(h_leaves, float_ix, strict=True):
        x = jnp.asarray(p_leaves[i]).astype(h.dtype)
        new_h.append(jax.lax.dynamic_update_index_in_dim(h, to_host(x) if host else x, next_slot, 0))
      slot_steps = slot_steps.at[next_slot].set(step)
      next_slot = (next_slot + 1) % ctx
      filled = jnp.minimum(filled + 1, ctx)
      is_jump = (to_jump == 0) & (filled >= ctx)
      new_h, applied, rejected, pstate, deltas = jax.lax.cond(
          is_jump, jump, no_jump, new_h, slot_steps, next_slot, pstate)
      filled = jnp.where(is_jump, 0, filled)
      return new_h, slot_steps, next_slot, filled, pstate, applied, rejected, deltas

    def keep(h_leaves, slot_steps, next_slot, filled, pstate):
      return list(h_leaves), slot_steps, next_slot, filled, pstate, jnp.array(False), \
          jnp.array(False), no_deltas()

    # Non-recording steps only pay for this predicate and the fused `where` below.
    h_leaves, slot_steps, next_slot, filled, pstate, applied, rejected, deltas = jax.lax.cond(
        do_record, record, keep, h_leaves, state.slot_steps, state.next_slot, state.filled,
        state.predictor_state)

    out_leaves = list(u_leaves)
    for j, (h, i) in enumerate(zip(h_leaves, float_ix, strict=True)):
      u = u_leaves[i]
      delta = deltas[j] if host else jax.lax.dynamic_index_in_dim(h, next_slot, 0, keepdims=False)
      out_leaves[i] = jnp.where(applied, delta.astype(jnp.result_type(u)), u)

    loss_ema, pre_jump, post_mean = state.loss_ema, state.pre_jump_loss, state.post_jump_loss
    n_rollbacks, horizon_scale = state.n_rollbacks, state.horizon_scale
    if rollback_factor is not None:
      loss = jnp.asarray(value, jnp.float32)
      since = step - state.last_jump_step - 1  # 0 at the first call after a jump
      in_window = (state.last_jump_step >= 0) & (since >= 0) & (since <= rollback_window)
      # The running mean tracks the loss outside the windows that follow jumps (including the jump call).
      new_ema = jnp.where(jnp.isnan(loss_ema), loss, 0.9 * loss_ema + 0.1 * loss)
      loss_ema = jnp.where(in_window, loss_ema, new_ema)
      pre_jump = jnp.where(applied, loss_ema, pre_jump)
      post_mean = jnp.where(in_window, jnp.where(since == 0, loss, 0.9 * post_mean + 0.1 * loss), 0.0)
      check = in_window & (since == rollback_window)
      roll = check & (post_mean > rollback_factor * pre_jump)
      # theta_J sits in the newest recorded slot until ctx more recordings (>= interval steps away).
      newest = (next_slot - 1) % ctx

      def roll_back(out):
        out = list(out)
        for h, i in zip(h_leaves, float_ix, strict=True):
          theta_j = jax.lax.dynamic_index_in_dim(h, newest, 0, keepdims=False)
          theta_j = (to_device(theta_j) if host else theta_j).astype(jnp.float32)
          back = theta_j - jnp.asarray(p_leaves[i]).astype(jnp.float32)
          out[i] = jnp.where(roll, back.astype(jnp.result_type(out[i])), out[i])
        return out

      if host:  # read the host copy only when a rollback happens
        out_leaves = jax.lax.cond(roll, roll_back, list, out_leaves)
      else:
        out_leaves = roll_back(out_leaves)
      n_rollbacks = n_rollbacks + roll.astype(jnp.int32)
      horizon_scale = jnp.where(roll, horizon_scale * rollback_shrink, horizon_scale)

    new_state = NowcastState(
        count=step + 1,
        history=jax.tree.unflatten(h_treedef, h_leaves),
        slot_steps=slot_steps,
        next_slot=next_slot,
        filled=filled,
        n_jumps=state.n_jumps + applied.astype(jnp.int32),
        n_rejected=state.n_rejected + rejected.astype(jnp.int32),
        last_jump_step=jnp.where(applied, step, state.last_jump_step),
        predictor_state=pstate,
        loss_ema=loss_ema,
        pre_jump_loss=pre_jump,
        post_jump_loss=post_mean,
        n_rollbacks=n_rollbacks,
        horizon_scale=horizon_scale,
    )
    return jax.tree.unflatten(treedef, out_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_nowcast_state(opt_state: Any) -> Any:  # NowcastState, FarcastState or None
  """The :class:`NowcastState` (or ``farcast``'s ``FarcastState``) inside an optimizer state (a chain,
  ``MultiSteps``, ...), or None.

  Handy for logging: ``find_nowcast_state(opt_state).n_jumps`` (both states have ``n_jumps``,
  ``n_rejected`` and ``last_jump_step``; only :class:`NowcastState` has ``n_rollbacks``, as farcast has no
  rollback).

  >>> import jax.numpy as jnp, optax, optax_nowcast as onc
  >>> tx = optax.MultiSteps(optax.chain(optax.adam(1e-3),
  ...                                   onc.nowcast(onc.predictors.linefit(), interval=10)), 2)
  >>> int(find_nowcast_state(tx.init({"w": jnp.zeros(3)})).n_jumps)
  0
  """
  def is_jump_state(x) -> bool:
    return isinstance(x, NowcastState) or (isinstance(x, tuple) and type(x).__name__ == "FarcastState")

  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_jump_state) if is_jump_state(x)]
  if len(found) > 1:
    raise ValueError(f"opt_state holds {len(found)} nowcast states; index the chain to pick one.")
  return found[0] if found else None
