"""``nowcast(learning_rate=schedule)``: times and horizon in cumulative learning rate (the rate clock)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc

INTERVAL, CTX, K = 4, 3, 2
PERIOD = INTERVAL * CTX  # jumps at steps 12, 24, 36, ...
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=5, decay_steps=60, end_value=0.0)


def _cumulative(schedule, s: int) -> float:
  return float(np.sum([float(schedule(i)) for i in range(s)], dtype=np.float64))


def _run(tx, steps: int, jit: bool = True):
  """SGD with a constant gradient -1: the parameter moves by exactly lr(s) at step s, so w_s = C(s)."""
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  traj = [params]
  for _ in range(steps):
    updates, state = update({"w": -jnp.ones(3)}, state, params)
    params = optax.apply_updates(params, updates)
    traj.append(params)
  return traj, state


@pytest.mark.parametrize("jit", [True, False])
def test_the_jump_is_exact_on_a_trajectory_linear_in_the_cumulative_rate(jit):
  tx = optax.chain(optax.sgd(SCHEDULE), onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX,
                                                    horizon=K, learning_rate=SCHEDULE))
  traj, state = _run(tx, PERIOD + 1, jit)
  # The update that receives w_12 jumps to where the rate of steps 12 .. 12 + K * INTERVAL - 1 takes it.
  want = _cumulative(SCHEDULE, PERIOD + K * INTERVAL)
  np.testing.assert_allclose(np.asarray(traj[PERIOD + 1]["w"]), want, rtol=1e-5)
  assert int(onc.find_nowcast_state(state).n_jumps) == 1
  assert float(onc.find_nowcast_state(state).clock) == pytest.approx(_cumulative(SCHEDULE, PERIOD + 1),
                                                                       rel=1e-5)


def test_step_time_overshoots_where_the_rate_clock_does_not():
  """At the third jump (step 36, on the cosine's way down) the jump should add the rate of the next K
  intervals; measured in steps, the line through the last states overshoots it."""
  j = 3 * PERIOD
  want = _cumulative(SCHEDULE, j + K * INTERVAL) - _cumulative(SCHEDULE, j)
  jumps = {}
  for name, lr in (("steps", None), ("rate", SCHEDULE)):
    tx = optax.chain(optax.sgd(SCHEDULE), onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX,
                                                      horizon=K, learning_rate=lr))
    traj, state = _run(tx, j + 1)
    assert int(onc.find_nowcast_state(state).n_jumps) == 3
    jumps[name] = float(traj[j + 1]["w"][0] - traj[j]["w"][0])
  assert jumps["rate"] == pytest.approx(want, rel=1e-4)
  assert jumps["steps"] > 1.2 * want


def test_a_constant_rate_gives_the_step_time_run():
  const = lambda s: 0.1 * jnp.ones_like(jnp.asarray(s, jnp.float32))
  runs = []
  for lr in (None, const, 0.1):
    tx = optax.chain(optax.sgd(0.1), onc.nowcast(onc.predictors.linefit_plus(), interval=INTERVAL, ctx=CTX,
                                                 horizon=K, learning_rate=lr))
    runs.append(_run(tx, 2 * PERIOD + 2)[0])
  for other in runs[1:]:
    for a, b in zip(runs[0], other, strict=True):
      np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(b["w"]), rtol=1e-6, atol=1e-6)


def test_no_jump_once_the_schedule_has_ended():
  """A rate that drops to zero at step 12: the jump at 12 has no rate ahead, so it is skipped (not
  rejected) and the base update passes."""
  schedule = optax.piecewise_constant_schedule(1.0, {PERIOD: 0.0})
  tx = optax.chain(optax.sgd(schedule), onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX,
                                                    horizon=K, learning_rate=schedule))
  traj, state = _run(tx, PERIOD + 1)
  nc = onc.find_nowcast_state(state)
  assert int(nc.n_jumps) == 0 and int(nc.n_rejected) == 0
  assert float(traj[PERIOD + 1]["w"][0]) == pytest.approx(PERIOD)  # the base update: lr 0 adds nothing


def test_whole_interval_predictors_get_the_rounded_horizon():
  seen = []

  def predict(history, times, k, state):
    jax.debug.callback(lambda k: seen.append(np.asarray(k)), k)
    return jax.tree.map(lambda h: h[-1], history), state

  pred = onc.predictors.Predictor(init=lambda p: (), predict=predict, name="spy")
  tx = optax.chain(optax.sgd(SCHEDULE), onc.nowcast(pred, interval=INTERVAL, ctx=CTX, horizon=K,
                                                    learning_rate=SCHEDULE))
  _run(tx, PERIOD + 1)
  c = [_cumulative(SCHEDULE, s) for s in (4, 12, 12 + K * INTERVAL)]
  k_eff = (c[2] - c[1]) / ((c[1] - c[0]) / (PERIOD - INTERVAL) * INTERVAL)
  assert seen[-1].dtype == np.int32 and int(seen[-1]) == round(k_eff)


def test_bad_learning_rate_is_named():
  with pytest.raises(ValueError, match="learning_rate must be the base optimizer's schedule"):
    onc.nowcast(onc.predictors.linefit(), interval=4, learning_rate="cosine")
