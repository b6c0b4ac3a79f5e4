"""Period and horizon schedules: host tables and traced lookups agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_nowcast import schedules


def _traced_jumps(schedule, total_steps):
  """Steps s in [0, total_steps] at which next_jump(s) == s, evaluated under jit."""
  steps = jnp.arange(total_steps + 1, dtype=jnp.int32)
  jump, index = jax.jit(jax.vmap(schedule.next_jump))(steps)
  hit = np.asarray(jump == steps)
  return np.asarray(steps)[hit], np.asarray(index)[hit]


def test_constant_period_table_and_trace_agree():
  s = schedules.constant_period(300)
  assert s.jump_steps(1000).tolist() == [300, 600, 900]
  steps, index = _traced_jumps(s, 1000)
  assert steps.tolist() == [300, 600, 900]
  assert index.tolist() == [0, 1, 2]
  # Any step before a jump points at it.
  jump, j = s.next_jump(jnp.int32(301))
  assert (int(jump), int(j)) == (600, 1)


def test_dynamic_period_grows_and_follows_formula():
  s = schedules.dynamic_period(min_period=100, max_period=500, total_steps=2000)
  table = s.jump_steps(4000)
  gaps = np.diff(np.concatenate([[0], table]))
  assert gaps[0] == 100
  assert np.all(np.diff(gaps) >= 0), "the period never shrinks"
  assert gaps[-1] == 500
  for prev, nxt in zip(table[:-1], table[1:], strict=True):
    expected = round(100 + 400 * min(1.0, prev / 2000))
    assert nxt - prev == expected
  steps, index = _traced_jumps(s, 4000)
  assert steps.tolist() == table.tolist()
  assert index.tolist() == list(range(len(table)))


def test_dynamic_period_power_keeps_jumps_frequent_longer():
  lin = schedules.dynamic_period(100, 500, 2000, power=1.0).jump_steps(2000)
  late = schedules.dynamic_period(100, 500, 2000, power=3.0).jump_steps(2000)
  assert len(late) > len(lin)


def test_k_decay_matches_nino_table():
  kd = schedules.k_decay(40, total_steps=10_000).resolve(schedules.constant_period(1000))
  assert kd.table().tolist() == [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
  ks = [int(kd(jnp.int32(j))) for j in range(12)]
  assert ks == [40, 33, 26, 21, 16, 11, 8, 5, 3, 1, 1, 1]


def test_k_decay_p1_is_linear():
  kd = schedules.k_decay(10, n_jumps=10, p=1.0)
  assert kd.table().tolist() == list(range(10, 0, -1))


@pytest.mark.parametrize("total", [2_000, 3_000, 10_000])
def test_for_run_scales_nino_geometry_to_the_run(total):
  """``for_run``: ten jump periods per run (nine jumps in ``total`` updates), the first one predicting
  40 intervals = 0.8 of the run ahead; checked on a parameter moving one unit per step under jit."""
  import optax

  import optax_nowcast as onc

  settings = schedules.for_run(total)
  assert settings["interval"] == total // 50 and settings["ctx"] == 5
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(onc.predictors.linefit(), **settings))
  params = {"w": jnp.zeros(())}
  state = tx.init(params)

  @jax.jit
  def run(params, state):
    def body(carry, _):
      p, s = carry
      u, s = tx.update({"w": -jnp.ones(())}, s, p)
      q = optax.apply_updates(p, u)
      return (q, s), q["w"] - p["w"]
    return jax.lax.scan(body, (params, state), None, length=total)

  (_, state), moves = run(params, state)
  jumps = np.flatnonzero(np.asarray(moves) > 1.5)
  assert jumps.tolist() == [total // 10 * j for j in range(1, 10)]
  np.testing.assert_allclose(float(moves[total // 10]), 0.8 * total, rtol=1e-4)
  assert int(onc.find_nowcast_state(state).n_jumps) == 9


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: schedules.constant_period(0), "period must be >= 1"),
        (lambda: schedules.constant_period(2.5), "period must be an int"),
        (lambda: schedules.dynamic_period(500, 100, 1000), "max_period must be >= 500"),
        (lambda: schedules.dynamic_period(100, 500, 1000, power=0), "power must be a positive"),
        (lambda: schedules.k_decay(40), "needs n_jumps or total_steps"),
        (lambda: schedules.k_decay(0, n_jumps=3), "max_k must be >= 1"),
        (lambda: schedules.constant_horizon(-1), "horizon must be >= 0"),
        (lambda: schedules.k_decay(5, total_steps=5).resolve(schedules.constant_period(10)),
         "allows no jump"),
        (lambda: schedules.for_run(20), "total_steps must be >= 50"),
        (lambda: schedules.for_run(1000, ctx=60), "do not fit"),
        (lambda: schedules.for_run(1000, intervals_per_run=0), "intervals_per_run must be >= 1"),
    ],
)
def test_schedule_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()
