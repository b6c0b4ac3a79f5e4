r"""``nowcast``: an optax transformation that periodically jumps the parameters ahead.

Steps are counted as optax counts them: the update call made with ``state.count == s`` receives the
parameters :math:`\theta_s` reached after ``s`` updates. Between jumps ``nowcast`` passes the base
optimizer's updates through untouched. For each scheduled jump step ``J`` it records, in ``ctx`` slots,
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

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import schedules as schedules_lib
from optax_nowcast._checks import check_int, check_positive_or_none
from optax_nowcast._gate import float_params, is_float, jump_gate
from optax_nowcast._placement import DeviceHistory, placement
from optax_nowcast._with_base import with_base
from optax_nowcast.farcast import FarcastState
from optax_nowcast.predictors.base import Predictor, full_precision

__all__ = ["NowcastState", "RollbackState", "WindowState", "find_nowcast_state", "nowcast", "nowcast_phase"]


class WindowState(NamedTuple):
  """The states recorded for the next jump, in the history's ``ctx`` slots.

  The ``i``-th state recorded since the last jump goes to slot ``i``, so at the jump the slots hold the
  window oldest first and the predictor reads the history as it is stored (no reordering copy). After the
  jump, slot 0 (stale) holds the jump until it is applied, and slot ``ctx - 1`` the pre-jump state (read
  back by a rollback) until the next window's last recording.

  Attributes:
    slot_steps: int32 ``(ctx,)``, the step of the state in each slot, ``-1`` while empty.
    slot_clock: float32 ``(ctx,)``, the clock (:attr:`NowcastState.clock`) when each slot was written.
    filled: int32, states recorded since the last jump: the slot the next one goes to.
    missed: int32, recordings, jumps and rollback checks that were due at an update whose
      ``nowcast_phase`` could not make them (see :func:`nowcast_phase`); a missed recording restarts the
      window, so no jump is made from an incomplete one.
  """

  slot_steps: jax.Array
  slot_clock: jax.Array
  filled: jax.Array
  missed: jax.Array


class RollbackState(NamedTuple):
  """What ``nowcast(rollback_factor=...)`` tracks to undo a jump that raised the loss.

  Attributes:
    loss_ema: float32, running mean of the ``value`` (loss) passed to ``update``.
    pre_jump_loss: float32, ``loss_ema`` when the last jump was made.
    post_jump_loss: float32, running mean of the losses since the last jump, within the rollback window.
    n_rollbacks: int32, jumps undone because the loss rose.
    horizon_scale: float32, factor on ``k`` (``rollback_shrink`` after each rollback).
    last_rollback_step: int32, step of the last rollback, ``-1`` before the first; a rollback closes its
      jump's window.
  """

  loss_ema: jax.Array
  pre_jump_loss: jax.Array
  post_jump_loss: jax.Array
  n_rollbacks: jax.Array
  horizon_scale: jax.Array
  last_rollback_step: jax.Array


class NowcastState(NamedTuple):
  """State of :func:`nowcast` (find it in any chain with :func:`find_nowcast_state`).

  >>> import jax.numpy as jnp, optax, optax_nowcast as onc
  >>> state = onc.nowcast(onc.predictors.linefit(), interval=10, ctx=3).init({"w": jnp.zeros(4)})
  >>> state.history["w"].shape, int(state.count), int(state.n_jumps), state.window.slot_steps.tolist()
  ((3, 4), 0, 0, [-1, -1, -1])

  Attributes:
    count: int32, number of ``update`` calls so far (the step reached after the last update).
    clock: float32, the cumulative learning rate of those updates, ``sum_{i < count} lr(i)`` with
      ``nowcast(learning_rate=schedule)``, else ``count``.
    history: pytree like ``params``; each float leaf has shape ``(ctx, *param.shape)`` in the history
      dtype, non-float leaves are ``optax.MaskedNode()``. Slot ``i`` holds the state of step
      ``window.slot_steps[i]``.
    window: :class:`WindowState`, which state sits in which slot.
    n_jumps: int32, jumps applied.
    n_rejected: int32, jumps skipped because the prediction was not finite (or too long).
    last_jump_step: int32, step of the last applied jump, ``-1`` before the first.
    predictor_state: whatever the predictor keeps.
    rollback: :class:`RollbackState` (unused without ``rollback_factor``).

  The fields of ``window`` and ``rollback`` are also readable directly (``state.n_rollbacks``,
  ``state.n_missed`` for ``window.missed``).
  """

  count: jax.Array
  clock: jax.Array
  history: Any
  window: WindowState
  n_jumps: jax.Array
  n_rejected: jax.Array
  last_jump_step: jax.Array
  predictor_state: Any
  rollback: RollbackState

  slot_steps = property(lambda self: self.window.slot_steps)
  filled = property(lambda self: self.window.filled)
  n_missed = property(lambda self: self.window.missed)
  loss_ema = property(lambda self: self.rollback.loss_ema)
  pre_jump_loss = property(lambda self: self.rollback.pre_jump_loss)
  post_jump_loss = property(lambda self: self.rollback.post_jump_loss)
  n_rollbacks = property(lambda self: self.rollback.n_rollbacks)
  horizon_scale = property(lambda self: self.rollback.horizon_scale)


@dataclasses.dataclass(frozen=True)
class _Rollback:
  factor: float
  window: int
  shrink: float
  limit: float | None


@dataclasses.dataclass(frozen=True)
class _Config:
  """Everything static about one ``nowcast``: built once by the constructor."""

  predictor: Predictor
  interval: int
  ctx: int
  period: schedules_lib.PeriodSchedule
  horizon: schedules_lib.HorizonSchedule
  history_dtype: Any
  max_jump_ratio: float | None
  rollback: _Rollback | None
  store: DeviceHistory
  learning_rate: Callable[[jax.Array], jax.Array] | None  # the base optimizer's schedule: a rate clock
  max_k: int  # a static bound on the horizon (for the rate clock's look-ahead)


def _init(cfg: _Config, params: Any) -> NowcastState:
  if params is None:
    raise ValueError("nowcast.init needs the parameters (tx.init(params)).")
  cfg.store.check_backend()

  def hist_leaf(p):
    if not is_float(p):
      return optax.MaskedNode()
    return cfg.store.zeros(p, cfg.ctx, cfg.history_dtype or jnp.result_type(p))

  # Every field gets its own buffer so that the state can be donated.
  zero = lambda: jnp.zeros((), jnp.int32)
  nan = lambda: jnp.full((), jnp.nan, jnp.float32)
  return NowcastState(
      count=zero(), clock=jnp.zeros((), jnp.float32), history=jax.tree.map(hist_leaf, params),
      window=WindowState(slot_steps=jnp.full((cfg.ctx,), -1, jnp.int32),
                         slot_clock=jnp.zeros((cfg.ctx,), jnp.float32), filled=zero(), missed=zero()),
      n_jumps=zero(), n_rejected=zero(), last_jump_step=jnp.full((), -1, jnp.int32),
      predictor_state=cfg.predictor.init(float_params(params)),
      rollback=RollbackState(loss_ema=nan(), pre_jump_loss=nan(), post_jump_loss=jnp.zeros((), jnp.float32),
                             n_rollbacks=zero(), horizon_scale=jnp.ones((), jnp.float32),
                             last_rollback_step=jnp.full((), -1, jnp.int32)))


def _record(cfg: _Config, history: list, win: WindowState, x: list, step: jax.Array,
            clock: jax.Array) -> tuple[list, WindowState]:
  """Writes the parameters ``x`` (float leaves) into the window's next slot, in place."""
  slot = jnp.minimum(win.filled, cfg.ctx - 1)
  history = [jax.lax.dynamic_update_index_in_dim(h, cfg.store.put(jnp.asarray(p).astype(h.dtype)), slot, 0)
             for h, p in zip(history, x, strict=True)]
  return history, win._replace(slot_steps=win.slot_steps.at[slot].set(step),
                               slot_clock=win.slot_clock.at[slot].set(clock),
                               filled=jnp.minimum(win.filled + 1, cfg.ctx))


def _rate_clock(cfg: _Config, win: WindowState, jump_step: jax.Array, k: jax.Array):
  r"""Times and horizon measured in cumulative learning rate ``C(s) = sum_{i<s} lr(i)``.

  With :math:`\bar\eta` the mean rate over the recorded window and :math:`u = \bar\eta\,\Delta` the
  clock of one interval at that rate, the states sit at :math:`t_i = (C(s_i) - C(J)) / u` and the jump
  reads the fit :math:`k' = (C(J + k\Delta) - C(J)) / u` intervals ahead: only as far as the rate left in
  the next ``k`` intervals carries the parameters. With a constant rate, ``t_i`` and ``k' = k`` are the
  step-time ones. Returns ``(times, k', go)``; ``go`` is False when ``k' < 1/2`` (the schedule has all
  but ended: no jump).
  """
  steps, clocks = win.slot_steps, win.slot_clock
  rate = (clocks[-1] - clocks[0]) / jnp.maximum(steps[-1] - steps[0], 1).astype(jnp.float32)
  unit = jnp.maximum(rate * cfg.interval, jnp.finfo(jnp.float32).tiny)
  ahead_steps = jnp.arange(cfg.max_k * cfg.interval)
  lrs = jnp.asarray(cfg.learning_rate(jump_step + ahead_steps), jnp.float32)
  ahead = jnp.sum(jnp.where(ahead_steps < k * cfg.interval, lrs, 0.0))
  k_eff = ahead / unit
  return (clocks - clocks[-1]) / unit, k_eff, (k_eff >= 0.5) & (rate > 0)


def _jump(cfg: _Config, h_treedef, history: list, win: WindowState, x: list, k: jax.Array, pstate: Any,
          jump_step: jax.Array):
  """Predicts from the full window (slots oldest first) and gates the jump: ``(Gate, go, predictor
  state)``; ``go`` is False when the rate clock says the schedule has ended (skipped, not rejected)."""
  states = [cfg.store.get(h) for h in history]
  if cfg.learning_rate is None:
    steps = win.slot_steps
    times, go = (steps - steps[-1]).astype(jnp.float32) / cfg.interval, jnp.array(True)
  else:
    times, k, go = _rate_clock(cfg, win, jump_step, k)
    k = k if cfg.predictor.fractional_k else jnp.round(k).astype(jnp.int32)
  prediction, pstate = full_precision(cfg.predictor.predict)(
      jax.tree.unflatten(h_treedef, states), times, k, pstate)
  # Materialised: a prediction fused from the history (a line fit, or simply its last state) would
  # otherwise be recomputed from the history after the jump is written into slot 0, and XLA would copy
  # the whole history to allow it. A conditional's result is a buffer of its own (XLA drops
  # optimisation barriers before fusing on CPU). The predicate is data XLA cannot fold; the other branch
  # would only run for non-finite times, and its NaNs would fail the gate.
  prediction = jax.lax.cond(jnp.isfinite(times[-1]), lambda p: list(p),
                            lambda p: [jnp.full_like(a, jnp.nan) for a in p],
                            _check_prediction(cfg, prediction, h_treedef, x))
  gate = jump_gate(prediction, x, k, max_jump_ratio=cfg.max_jump_ratio, span=cfg.ctx - 1,
                   recent=lambda: ([c[0] for c in states], [c[-1] for c in states]))
  return gate, go, pstate


def _horizon(cfg: _Config, jump_index: jax.Array, rollback: RollbackState) -> jax.Array:
  k = cfg.horizon(jump_index)
  if cfg.rollback is not None:
    k = jnp.maximum(1, jnp.round(k * rollback.horizon_scale)).astype(jnp.int32)
  return k


def _rollback_check(cfg: _Config, rb: RollbackState, value: Any, step: jax.Array, last_jump_step: jax.Array,
                    applied: jax.Array) -> tuple[jax.Array, RollbackState]:
  """Tracks the loss around jumps (scalars only): ``(roll, RollbackState)``; ``roll`` is True
  ``rollback.window`` steps after a jump whose running mean loss exceeds ``rollback.factor`` times the
  pre-jump mean, or at once within the window when the loss is non-finite or above ``rollback.limit``
  times the pre-jump mean. The returned state counts the rollback; the caller reads the pre-jump state
  back."""
  r = cfg.rollback
  loss = jnp.asarray(value, jnp.float32)
  since = step - last_jump_step - 1  # 0 at the first call after a jump
  in_window = ((last_jump_step >= 0) & (since >= 0) & (since <= r.window)
               & (rb.last_rollback_step < last_jump_step))  # a rollback closes the window
  # The running mean tracks the loss outside the windows that follow jumps (including the jump call),
  # skipping non-finite losses; inside a window a non-finite loss counts as infinitely high (a rollback).
  finite = jnp.isfinite(loss)
  new_ema = jnp.where(jnp.isnan(rb.loss_ema), loss, 0.9 * rb.loss_ema + 0.1 * loss)
  loss_ema = jnp.where(in_window | ~finite, rb.loss_ema, new_ema)
  pre_jump = jnp.where(applied, loss_ema, rb.pre_jump_loss)
  seen = jnp.where(finite, loss, jnp.inf)
  post = jnp.where(in_window, jnp.where(since == 0, seen, 0.9 * rb.post_jump_loss + 0.1 * seen), 0.0)
  roll = (since == r.window) & (post > r.factor * pre_jump)
  if r.limit is not None:  # diverging: undone before the parameters overflow
    roll |= ~finite | ((pre_jump > 0) & (loss > r.limit * pre_jump))
  roll &= in_window
  return roll, RollbackState(loss_ema=loss_ema, pre_jump_loss=pre_jump, post_jump_loss=post,
                             n_rollbacks=rb.n_rollbacks + roll.astype(jnp.int32),
                             horizon_scale=jnp.where(roll, rb.horizon_scale * r.shrink, rb.horizon_scale),
                             last_rollback_step=jnp.where(roll, step, rb.last_rollback_step))


def _roll_back(cfg: _Config, roll: jax.Array, history: list, x: list, out: list) -> list:
  """Where ``roll``, the updates that return to the pre-jump state ``theta_J`` (the window's last slot
  until the next window is complete, >= ``interval`` steps after the jump)."""
  def back(out):
    out = list(out)
    for j, (h, p) in enumerate(zip(history, x, strict=True)):
      theta_j = cfg.store.get(jax.lax.index_in_dim(h, cfg.ctx - 1, 0, keepdims=False))
      delta = theta_j.astype(jnp.float32) - jnp.asarray(p).astype(jnp.float32)
      out[j] = jnp.where(roll, delta.astype(jnp.result_type(out[j])), out[j])
    return out

  return cfg.store.when(roll, back, out)


def _float_paths(tree: Any, is_history: bool) -> list[tuple[str, tuple[int, ...]]]:
  """``(path, shape)`` of each float leaf (of one state: a history leaf without its ``ctx`` axis)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(jax.tree_util.keystr(path), tuple(jnp.shape(v))[1 if is_history else 0:]) for path, v in leaves
          if is_float(v)]


def _check_like_init(params: Any, history: Any) -> None:
  """A clear error when ``update`` gets parameters other than those ``init`` was given (a changed model,
  a batch axis added): the first differing path and both shapes."""
  got, had = _float_paths(params, False), _float_paths(history, True)
  if got == had:
    return
  fix = "Pass update the parameters of the model init was given (and init the optimizer again after " \
        "changing the model)."
  i = next((i for i, (a, b) in enumerate(zip(got, had, strict=False)) if a != b), min(len(got), len(had)))
  if i < min(len(got), len(had)) and got[i][0] == had[i][0]:
    raise ValueError(f"nowcast.update: the parameter at {got[i][0]} has shape {got[i][1]}, but tx.init was "
                     f"given shape {had[i][1]}. {fix}")
  now = f"{got[i][0]} (shape {got[i][1]})" if i < len(got) else "nothing"
  then = f"{had[i][0]} (shape {had[i][1]})" if i < len(had) else "nothing"
  raise ValueError(f"nowcast.update: the parameters differ from those tx.init was given: float leaf {i} is "
                   f"{now} at update but was {then} at init. {fix}")


def _check_prediction(cfg: _Config, prediction: Any, h_treedef: Any, x: list) -> list:
  """The prediction's leaves, or a clear error when the predictor returned the wrong structure, shape or
  dtype (one state: the history's structure without the ``ctx`` axis, float leaves)."""
  name = cfg.predictor.name
  leaves, treedef = jax.tree.flatten(prediction)
  if treedef != h_treedef:
    raise ValueError(f"predictor {name!r} returned a prediction of structure {treedef}, expected that of one "
                     f"state, {h_treedef} (the history it was given, without the leading ctx axis).")
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(prediction)[0]]
  for path, leaf, p in zip(paths, leaves, x, strict=True):
    if jnp.shape(leaf) != jnp.shape(p) or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(f"predictor {name!r} returned {jnp.result_type(leaf)}{list(jnp.shape(leaf))} at "
                       f"{path}, expected a float array of the parameter's shape {list(jnp.shape(p))} (one "
                       f"state, without the ctx axis).")
  return leaves


def _due(cfg: _Config, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(to_jump, jump_index, record)`` at ``step``: steps to the next scheduled jump, its index, and
  whether the parameters of this step are recorded (``interval`` apart, ``ctx`` before each jump)."""
  jump_step, jump_index = cfg.period.next_jump(step)
  to_jump = jump_step - step
  return to_jump, jump_index, (to_jump % cfg.interval == 0) & (to_jump <= (cfg.ctx - 1) * cfg.interval)


def _plain(cfg: _Config, updates: Any, state: NowcastState, value: Any,
           missing: bool = True) -> tuple[Any, NowcastState]:
  """An update with ``nowcast_phase="plain"``: the base updates and the history pass through untouched;
  only scalars change. A recording (or rollback check) that was due is counted in ``window.missed`` and
  restarts the window (unless ``missing`` is False: the parameters have no float leaf to record)."""
  step = state.count
  _, _, due = _due(cfg, step)
  rollback = state.rollback
  if cfg.rollback is not None:
    roll, checked = _rollback_check(cfg, rollback, value, step, state.last_jump_step, jnp.array(False))
    rollback = checked._replace(n_rollbacks=rollback.n_rollbacks, horizon_scale=rollback.horizon_scale,
                                last_rollback_step=rollback.last_rollback_step)
    due = due | roll
  due &= missing
  win = state.window
  win = win._replace(filled=jnp.where(due, 0, win.filled), missed=win.missed + due.astype(jnp.int32))
  rate = 1.0 if cfg.learning_rate is None else jnp.asarray(cfg.learning_rate(step), jnp.float32)
  return updates, state._replace(count=step + 1, clock=state.clock + rate, window=win, rollback=rollback)


PHASES = ("plain", "record", "full")


def _update(cfg: _Config, updates: Any, state: NowcastState, params: Any = None, *, value: Any = None,
            nowcast_phase: str | None = None, **extra_args: Any) -> tuple[Any, NowcastState]:
  del extra_args
  if cfg.rollback is not None and value is None:
    raise ValueError("nowcast(rollback_factor=...) needs the loss: call tx.update(updates, state, params, "
                     "value=loss).")
  phase = "full" if nowcast_phase is None else nowcast_phase
  if not isinstance(phase, str) or phase not in PHASES:
    raise ValueError(f"nowcast_phase must be None or one of {PHASES}, a Python str known when the step is "
                     f"traced (make it a static argument: jax.jit(..., static_argnames=...); "
                     f"onc.nowcast_phase(step, ...) gives it), got {nowcast_phase!r}.")
  if phase == "plain":
    return _plain(cfg, updates, state, value)
  if params is None:
    raise ValueError(
        "nowcast needs the current parameters to record their trajectory: call "
        "tx.update(updates, state, params). (Flax TrainState and nnx.Optimizer pass them.)")
  p_leaves, treedef = jax.tree.flatten(params)
  u_leaves = treedef.flatten_up_to(updates)
  float_ix = [i for i, p in enumerate(p_leaves) if is_float(p)]
  x = [p_leaves[i] for i in float_ix]
  h_leaves, h_treedef = jax.tree.flatten(state.history)
  _check_like_init(params, state.history)
  if not float_ix:  # nothing to record or predict: no jump is made (or counted)
    return _plain(cfg, updates, state, value, missing=False)
  store, no_jump = cfg.store, (jnp.array(False), jnp.array(False))

  step = state.count  # `params` are the state reached after `step` updates
  to_jump, jump_index, do_record = _due(cfg, step)

  def jump(h, win, pstate):
    k = _horizon(cfg, jump_index, state.rollback)
    gate, go, pstate = _jump(cfg, h_treedef, h, win, x, k, pstate, step)
    h, carried = store.stash(h, gate.deltas)
    return h, (gate.ok & go, ~gate.ok & go), pstate, carried

  def record(h, win, pstate):
    h, win = _record(cfg, h, win, x, step, state.clock)
    is_jump = (to_jump == 0) & (win.filled >= cfg.ctx)
    if phase == "full":
      h, flags, pstate, carried = jax.lax.cond(
          is_jump, jump, lambda h, w, s: (list(h), no_jump, s, store.nothing_carried(x)), h, win, pstate)
    else:  # a "record" step compiles no jump: one that was due is counted as missed
      flags, carried = no_jump, store.nothing_carried(x)
      win = win._replace(missed=win.missed + is_jump.astype(jnp.int32))
    # Every scheduled jump step ends the window, also one left incomplete by a missed recording.
    return h, win._replace(filled=jnp.where(to_jump == 0, 0, win.filled)), flags, pstate, carried

  def keep(h, win, pstate):
    return list(h), win, no_jump, pstate, store.nothing_carried(x)

  # Steps that do not record pay for this predicate and, with a device history, the fused `where` below
  # (one read of slot 0); "plain" steps pay for neither, "record" steps for no jump.
  h_leaves, win, (applied, rejected), pstate, carried = jax.lax.cond(
      do_record, record, keep, h_leaves, state.window, state.predictor_state)
  out = [u_leaves[i] for i in float_ix]
  if phase == "full":
    jumps = store.jump(h_leaves, carried)
    out = [jnp.where(applied, d.astype(jnp.result_type(u)), u) for d, u in zip(jumps, out, strict=True)]
  rollback = state.rollback
  if cfg.rollback is not None:
    roll, rollback = _rollback_check(cfg, rollback, value, step, state.last_jump_step, applied)
    out = _roll_back(cfg, roll, h_leaves, x, out)
  out_leaves = list(u_leaves)
  for o, i in zip(out, float_ix, strict=True):
    out_leaves[i] = o
  rate = 1.0 if cfg.learning_rate is None else jnp.asarray(cfg.learning_rate(step), jnp.float32)
  return jax.tree.unflatten(treedef, out_leaves), NowcastState(
      count=step + 1, clock=state.clock + rate, history=jax.tree.unflatten(h_treedef, h_leaves), window=win,
      n_jumps=state.n_jumps + applied.astype(jnp.int32),
      n_rejected=state.n_rejected + rejected.astype(jnp.int32),
      last_jump_step=jnp.where(applied, step, state.last_jump_step), predictor_state=pstate,
      rollback=rollback)


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
    rollback_limit: float | None = 100.0,
    history_memory: str = "device",
    learning_rate: float | optax.Schedule | None = None,
    base: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Periodically replaces the parameters by a predictor's nowcast of their future.

  Place it last in an ``optax.chain``, after the optimizer whose trajectory it extrapolates, or give that
  optimizer as ``base``; ``update`` needs ``params``.

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
    rollback_limit: within the window, undo the jump at once when the loss is non-finite or above
      ``rollback_limit * pre``: a jump the base optimizer cannot recover from makes the parameters
      overflow within a few steps (FM-CNN8 with SGD + momentum at twice its rate: 15x the pre-jump loss
      after the jump, 370x three steps later, NaN parameters after eleven), and no update can bring
      non-finite parameters back. Good jumps raise the loss by at most ~8x at first on that suite.
      (The multiple applies to a positive pre-jump loss; a non-finite loss always undoes the jump.)
      ``None``: only the check at the window's end.
    history_memory: ``"device"`` (default) or ``"host"``: keep the ``ctx`` stored states in host memory
      (``jax.memory.Space.Host``, pinned host memory on GPU/TPU), so the accelerator holds none of them.
      States travel to the host when recorded and back only for a jump (and a rollback); the jump's
      ``prediction - params`` is then held on the device until it is applied. Needs a backend with host
      memory spaces (CPU, GPU and TPU in current JAX).
    learning_rate: the base optimizer's learning-rate schedule (``step -> rate``, as given to it), to
      measure the history's times and the horizon in cumulative learning rate instead of steps: with
      :math:`C(s) = \sum_{i<s} \eta(i)`, the states sit at :math:`C(s_i)` and the jump lands where the
      fit reaches :math:`C(J + k\Delta)`, so late in a decaying schedule the jump extrapolates only as far
      as the remaining rate carries the parameters, and when less than half an interval's worth of rate
      (at the window's mean rate) is left, no jump is made. Predictors with ``fractional_k`` (the line
      fits) read the fit at the exact fractional horizon; the others at the nearest whole interval.
      ``None`` or a number (a constant rate): steps, as in the papers.
    base: the optimizer whose trajectory is extrapolated, to get it and ``nowcast`` as one transformation
      (the same updates as ``optax.chain(base, nowcast(...))``). With ``rollback_factor``, a rollback then
      also returns ``base``'s state to where it was when the jump step began (float leaves: moments,
      momentum; step counts keep counting), so that a bad jump's gradients do not stay in the momentum
      and push the restored parameters away. The state is then a :class:`NowcastWithBaseState`. Costs
      one more copy of ``base``'s state. ``None`` (default): ``nowcast`` alone, to be chained after the base.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` takes ``value=loss`` (for the rollback)
    and ``nowcast_phase``, a static str that :func:`nowcast_phase` gives for each step: ``"plain"``
    compiles a step that leaves the history alone (nothing is paid between recordings), ``"record"`` one
    that records but cannot jump, ``"full"`` (or ``None``, the default) the step that does everything,
    deciding on the device. Other keyword arguments are accepted and ignored.

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
  period_schedule = schedules_lib.resolve_period(period, ctx, interval)
  horizon_schedule = schedules_lib.resolve_horizon(horizon, ctx, period_schedule)
  check_positive_or_none("max_jump_ratio", max_jump_ratio, "10.0")
  check_positive_or_none("rollback_factor", rollback_factor, "1.5")
  rollback = None
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
    check_positive_or_none("rollback_limit", rollback_limit, "100.0")
    rollback = _Rollback(float(rollback_factor), rollback_window, float(rollback_shrink),
                         None if rollback_limit is None else float(rollback_limit))
  if history_dtype is not None:
    try:
      history_dtype = jnp.dtype(history_dtype)
    except TypeError as e:
      raise ValueError(f"history_dtype must be a float dtype such as jnp.bfloat16, "
                       f"got {history_dtype!r}.") from e
    if not jnp.issubdtype(history_dtype, jnp.floating):
      raise ValueError(f"history_dtype must be a float dtype such as jnp.bfloat16 or None, "
                       f"got {history_dtype}.")
  if learning_rate is not None and not callable(learning_rate):
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.number)):
      raise ValueError(f"learning_rate must be the base optimizer's schedule (a callable step -> rate, e.g. "
                       f"optax.cosine_decay_schedule(...)), a number or None, got {learning_rate!r}.")
    learning_rate = None  # a constant rate: the clock is the step count
  max_k = 0
  if learning_rate is not None:
    max_k = horizon_schedule.max_horizon()
  cfg = _Config(predictor=predictor, interval=interval, ctx=ctx, period=period_schedule,
                horizon=horizon_schedule, history_dtype=history_dtype, max_jump_ratio=max_jump_ratio,
                rollback=rollback, store=placement(history_memory), learning_rate=learning_rate,
                max_k=max_k)
  tx = optax.GradientTransformationExtraArgs(functools.partial(_init, cfg), functools.partial(_update, cfg))
  if base is None:
    return tx
  if not isinstance(base, optax.GradientTransformation):
    raise ValueError(f"base must be an optax.GradientTransformation (the optimizer whose trajectory is "
                     f"extrapolated, e.g. optax.adam(1e-3)), got {type(base).__name__}.")
  return with_base(base, tx, restore=rollback is not None)


_resolved_period = functools.lru_cache(maxsize=64)(schedules_lib.resolve_period)


def nowcast_phase(step: int, *, interval: int, ctx: int = 5,
                  period: int | schedules_lib.PeriodSchedule | None = None,
                  rollback_window: int | None = None, rollback_limit: float | None = 100.0) -> str:
  r"""What the update call with ``state.count == step`` has to do: ``"plain"``, ``"record"`` or ``"full"``.

  Pass the same ``interval``, ``ctx`` and ``period`` as to :func:`nowcast` (and its ``rollback_window``
  and ``rollback_limit`` when it has a ``rollback_factor``; ``nowcast``'s default window is
  ``min(50, interval // 4)``).
  Answered in pure Python on the host, so a training loop can pick one of three compiled steps without
  waiting for the device: pass it on as ``tx.update(..., nowcast_phase=phase)``, a static argument of the
  jitted step. A ``"plain"`` step leaves the history alone (no read, no write, no scratch, nothing but the
  base optimizer and a few scalars); a ``"record"`` step writes one slot in place and compiles no jump (so
  no predictor scratch); a ``"full"`` step is the one that jumps (or checks a rollback). A recording or a
  jump marked with a phase that cannot make it is not silently lost: ``state.n_missed`` counts it, and
  that window makes no jump.

  With the default period and jumps at :math:`J`, the steps :math:`J - i\Delta`, :math:`i = 1, \dots,
  ctx - 1` record, :math:`J` (and :math:`J + 1, \dots, J + 1 + w` with a rollback window :math:`w`,
  where the ``rollback_limit`` may undo the jump at any step; only :math:`J + 1 + w` with
  ``rollback_limit=None``) are full:

  >>> import optax_nowcast as onc
  >>> [(s, onc.nowcast_phase(s, interval=5, ctx=3)) for s in range(0, 31)
  ...  if onc.nowcast_phase(s, interval=5, ctx=3) != "plain"]
  [(5, 'record'), (10, 'record'), (15, 'full'), (20, 'record'), (25, 'record'), (30, 'full')]

  A training loop (``step_fn`` jitted with ``static_argnames="phase"``, calling
  ``tx.update(grads, opt_state, params, nowcast_phase=phase)``)::

    for step in range(num_steps):
      phase = onc.nowcast_phase(step, interval=200, ctx=5)
      params, opt_state, loss = step_fn(params, opt_state, batch, phase=phase)
  """
  period_schedule = _resolved_period(period, ctx, interval)
  step = int(step)
  to_jump = period_schedule.next_jump_host(step) - step
  if to_jump == 0:
    return "full"
  if to_jump % interval == 0 and to_jump <= (ctx - 1) * interval:
    return "record"
  if rollback_window is not None:
    # Full when a jump J lies in [step - 1 - w, step - 1 - first]: this step is J + 1 + since, with
    # since >= first (0 with a limit: any step of the window may roll back; w without).
    first = rollback_window if rollback_limit is None else 0
    last = step - 1 - first
    if last >= 0 and period_schedule.next_jump_host(max(step - 1 - rollback_window, 0)) <= last:
      return "full"
  return "plain"


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
    return isinstance(x, NowcastState | FarcastState)

  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_jump_state) if is_jump_state(x)]
  if len(found) > 1:
    raise ValueError(f"opt_state holds {len(found)} nowcast states; index the chain to pick one.")
  return found[0] if found else None
