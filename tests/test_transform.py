"""Behaviour of the nowcast transformation: timing, exactness, dtypes, guards, jit/vmap/donation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import marker_predictor, numpy_linefit, run_steps

import optax_nowcast as onc
from optax_nowcast import schedules


def _jump_calls(trajectory, base_rate):
  """Update calls (0-based: the call that receives the params after s updates) that did not
  move params by the plain SGD step."""
  calls = []
  for s in range(len(trajectory) - 1):
    moved = np.asarray(trajectory[s + 1]["w"]) - np.asarray(trajectory[s]["w"])
    if not np.allclose(moved, base_rate, atol=1e-6):
      calls.append(s)
  return calls


def test_linear_trajectory_extrapolated_exactly_at_the_jump(constant_grad):
  lr, interval, ctx, k = 0.01, 3, 4, 5
  tx = optax.chain(optax.sgd(lr), onc.nowcast(onc.predictors.linefit(), interval=interval,
                                             ctx=ctx, horizon=k))
  params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.0)}
  traj, state = run_steps(tx, params, constant_grad, ctx * interval + 1)
  J = ctx * interval
  for name in params:
    expected = np.asarray(params[name]) + lr * (J + k * interval)  # the line, k intervals ahead
    np.testing.assert_allclose(traj[J + 1][name], expected, rtol=1e-6, atol=1e-6)
  assert int(state[1].n_jumps) == 1
  assert int(state[1].last_jump_step) == J


def test_jump_matches_an_independent_fit_of_a_curved_trajectory():
  # Adam on a quadratic: the trajectory is curved, so this checks the states and times used.
  target = jnp.array([3.0, -2.0, 0.5])
  grad_fn = lambda p: {"w": 2 * (p["w"] - target)}
  interval, ctx, k = 4, 5, 3
  tx = optax.chain(optax.adam(0.05),
                   onc.nowcast(onc.predictors.linefit(), interval=interval, ctx=ctx, horizon=k))
  traj, _ = run_steps(tx, {"w": jnp.zeros(3)}, grad_fn, 2 * ctx * interval + 1)
  for J in (ctx * interval, 2 * ctx * interval):
    states = [traj[J - i * interval]["w"] for i in reversed(range(ctx))]
    np.testing.assert_allclose(traj[J + 1]["w"], numpy_linefit(states, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "period, ctx, interval",
    [(None, 3, 2), (10, 3, 2), (schedules.dynamic_period(6, 20, total_steps=60), 3, 2)],
)
def test_jumps_exactly_at_scheduled_steps(period, ctx, interval, constant_grad):
  # A predictor that jumps to 100 + oldest state makes every jump visible.
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(marker_predictor(lambda h, t, k: h[0] + 100.0),
                                              interval=interval, ctx=ctx, period=period))
  n = 80
  traj, state = run_steps(tx, {"w": jnp.zeros(2)}, constant_grad, n)
  schedule = (schedules.constant_period(ctx * interval) if period is None else
              schedules.constant_period(period) if isinstance(period, int) else period)
  expected = [int(J) for J in schedule.jump_steps(n - 1)]
  assert _jump_calls(traj, 1.0) == expected
  # At each jump the oldest state used is the one recorded (ctx - 1) intervals before J.
  for J in expected:
    oldest = traj[J - (ctx - 1) * interval]["w"]
    np.testing.assert_allclose(traj[J + 1]["w"], np.asarray(oldest) + 100.0)
  assert int(state[1].n_jumps) == len(expected)


def test_k_decay_horizons_reach_the_predictor(constant_grad):
  # Jump to last state + k: the size of each jump reveals the k the schedule gave.
  horizon = schedules.k_decay(9, total_steps=40)
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(marker_predictor(lambda h, t, k: h[-1] + k),
                                              interval=2, ctx=2, horizon=horizon))
  traj, _ = run_steps(tx, {"w": jnp.zeros(())}, constant_grad, 50)
  jumps = [s for s in range(50) if s % 4 == 0 and s > 0]
  ks = [float(traj[s + 1]["w"] - traj[s]["w"]) for s in jumps]
  # NiNo's formula, written out: 10 jumps in 40 steps, k_j = round(linspace(3, 1, 10)[j] ** 2).
  expected = [float(round((3 - 2 * j / 9) ** 2)) for j in range(10)] + [1.0, 1.0]
  assert ks == expected
  assert jumps[:10] == schedules.constant_period(4).jump_steps(40).tolist()


def test_times_passed_to_the_predictor_are_relative_intervals(constant_grad):
  seen = []

  def fn(h, times, k):
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), times)
    return h[-1]

  tx = optax.chain(optax.sgd(1.0), onc.nowcast(marker_predictor(fn), interval=3, ctx=4))
  run_steps(tx, {"w": jnp.zeros(())}, constant_grad, 13)
  np.testing.assert_array_equal(seen[0], [-3.0, -2.0, -1.0, 0.0])


class TestJitAndEager(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_result(self):
    grad_fn = lambda p: {"w": jnp.sin(p["w"]) + 0.3, "b": p["b"] * 0.5 - 1.0}
    tx = optax.chain(optax.adam(0.1), onc.nowcast(onc.predictors.linefit_plus(), interval=2,
                                                  ctx=3, horizon=4))
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.array(0.2)}
    state = tx.init(params)
    update = self.variant(tx.update)
    for _ in range(14):
      updates, state = update(grad_fn(params), state, params)
      params = optax.apply_updates(params, updates)
    ref_traj, ref_state = run_steps(tx, {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.array(0.2)},
                                    grad_fn, 14, jit=True)
    chex.assert_trees_all_close(params, ref_traj[-1], rtol=1e-5, atol=1e-6)
    self.assertEqual(int(state[1].n_jumps), 2)
    self.assertEqual(int(ref_state[1].n_jumps), 2)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_are_preserved(param_dtype, constant_grad):
  tx = optax.chain(optax.sgd(0.1), onc.nowcast(onc.predictors.linefit(), interval=1, ctx=2))
  params = {"w": jnp.ones((4,), param_dtype), "n": jnp.arange(3, dtype=jnp.int32)}
  grad_fn = lambda p: {"w": -jnp.ones_like(p["w"]), "n": jnp.zeros_like(p["n"])}
  state = tx.init(params)
  assert state[1].history["w"].dtype == param_dtype
  assert isinstance(state[1].history["n"], optax.MaskedNode)
  step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p))
  for _ in range(5):
    updates, state = step(params, state)
    assert updates["w"].dtype == param_dtype
    params = optax.apply_updates(params, updates)
    assert params["w"].dtype == param_dtype
  assert int(state[1].n_jumps) == 2
  np.testing.assert_array_equal(params["n"], np.arange(3))


def test_history_dtype_lowers_storage_only(constant_grad):
  tx = optax.chain(optax.sgd(0.01), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3,
                                               history_dtype=jnp.bfloat16))
  params = {"w": jnp.full((8,), 1.0, jnp.float32)}
  traj, state = run_steps(tx, params, constant_grad, 7)
  assert state[1].history["w"].dtype == jnp.bfloat16
  assert traj[-1]["w"].dtype == jnp.float32
  # Prediction 1 + 0.01 * (6 + 3 * 2) = 1.12, within bfloat16 rounding of the stored states.
  np.testing.assert_allclose(traj[-1]["w"], 1.12, atol=2e-2)


def test_non_float_leaves_pass_through():
  tx = optax.chain(onc.nowcast(marker_predictor(lambda h, t, k: h[-1] + 5.0), interval=1, ctx=2))
  params = {"w": jnp.zeros(2), "step": jnp.array(7, jnp.int32), "flag": jnp.array(True)}
  updates = {"w": jnp.ones(2), "step": jnp.array(1, jnp.int32), "flag": jnp.array(False)}
  state = tx.init(params)
  for _ in range(3):
    out, state = tx.update(updates, state, params)
    assert out["step"].dtype == jnp.int32 and int(out["step"]) == 1
    assert out["flag"].dtype == jnp.bool_ and not bool(out["flag"])
  assert int(state[0].n_jumps) == 1


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_prediction_never_reaches_params(bad, constant_grad):
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(
      marker_predictor(lambda h, t, k: jnp.where(h[-1] == h[-1].ravel()[0], bad, h[-1])), interval=1, ctx=2))
  traj, state = run_steps(tx, {"w": jnp.zeros(3), "v": jnp.zeros(())}, constant_grad, 9)
  for p in traj:
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(p))
  # Every jump was rejected, so the base updates passed through: w = number of steps.
  np.testing.assert_allclose(traj[-1]["w"], 9.0)
  assert int(state[1].n_rejected) == 4 and int(state[1].n_jumps) == 0
  assert int(state[1].last_jump_step) == -1


def test_works_under_vmap_over_seeds():
  tx = optax.chain(optax.adam(0.1), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3))
  grad_fn = lambda p: {"w": p["w"] - 1.0}
  seeds = jnp.asarray([[0.0, 1.0], [2.0, -3.0], [5.0, 0.5]])

  def train(w):
    params = {"w": w}
    state = tx.init(params)
    for _ in range(13):
      updates, state = tx.update(grad_fn(params), state, params)
      params = optax.apply_updates(params, updates)
    return params["w"], state[1].n_jumps

  batched, jumps = jax.jit(jax.vmap(train))(seeds)
  for i in range(3):
    single, n = train(seeds[i])
    np.testing.assert_allclose(batched[i], single, rtol=1e-6)
    assert int(jumps[i]) == int(n) == 2


def test_state_can_be_donated(constant_grad):
  tx = optax.chain(optax.adam(0.1), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3))
  params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}

  def step(params, state):
    updates, state = tx.update(constant_grad(params), state, params)
    return optax.apply_updates(params, updates), state

  donated = jax.jit(step, donate_argnums=(0, 1))
  plain = jax.jit(step)
  p1 = p2 = params
  s1, s2 = tx.init(params), tx.init(params)
  for _ in range(13):
    p2, s2 = plain(p2, s2)
    p1, s1 = donated(p1, s1)
  chex.assert_trees_all_close(p1, p2)
  assert int(s1[1].n_jumps) == 2


def test_traces_once():
  traces = []
  tx = optax.chain(optax.adam(0.1), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3))

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    return optax.apply_updates(params, updates), state

  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  for _ in range(20):
    params, state = step(params, state)
  assert len(traces) == 1
  assert int(state[1].n_jumps) == 3


def test_base_optimizer_state_is_kept_across_jumps():
  grads = [{"w": jnp.full((3,), 0.1 * i - 0.5)} for i in range(12)]
  adam = optax.adam(0.1)
  tx = optax.chain(adam, onc.nowcast(onc.predictors.linefit(), interval=1, ctx=2))
  params = {"w": jnp.zeros(3)}
  s_adam, s_tx = adam.init(params), tx.init(params)
  for g in grads:
    _, s_adam = adam.update(g, s_adam, params)
    _, s_tx = tx.update(g, s_tx, params)
  chex.assert_trees_all_close(s_tx[0], s_adam)
  assert int(s_tx[1].n_jumps) == 5  # calls 0..11: jumps at 2, 4, 6, 8, 10


def test_empty_and_scalar_leaves(constant_grad):
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(onc.predictors.linefit(), interval=1, ctx=2))
  params = {"empty": jnp.zeros((0, 3)), "scalar": jnp.array(0.0), "nested": [jnp.zeros(2)]}
  traj, state = run_steps(tx, params, constant_grad, 3)
  assert traj[-1]["empty"].shape == (0, 3)
  # After 2 steps the jump extrapolates 2 intervals: 2 + 2 = 4.
  np.testing.assert_allclose(traj[3]["scalar"], 4.0)
  np.testing.assert_allclose(traj[3]["nested"][0], 4.0)


def _scripted_run(tx, losses, calls, grad=lambda p: {"w": -jnp.ones(3)}):
  """``calls`` jitted updates of w (3 zeros at first), the loss passed to update scripted per call
  (1.0 where ``losses`` has none): the parameters and states after each call, the initial ones first."""
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  traj, states = [params], [state]
  for c in range(calls):
    updates, state = update(grad(params), state, params, value=jnp.float32(losses.get(c, 1.0)))
    params = optax.apply_updates(params, updates)
    traj.append(params)
    states.append(state)
  return traj, states


def _rollback_run(predictor, losses_after_jump, factor=1.5, window=2, interval=4, calls=12, **kw):
  """SGD on w with a constant gradient; the loss passed to update is scripted per step.

  ctx 2: states are recorded at ``interval`` and ``2 * interval``; the call with count ``2 * interval``
  jumps."""
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(predictor, interval=interval, ctx=2, horizon=2,
                                               rollback_factor=factor, rollback_window=window, **kw))
  traj, states = _scripted_run(tx, losses_after_jump, calls)
  return traj, onc.find_nowcast_state(states[-1])


def test_rollback_undoes_a_jump_that_raises_the_loss():
  crazy = marker_predictor(lambda h, t, k: h[-1] + 100.0)
  # Records at 4, 8 (interval 4, ctx 2): the jump is the call with count 8 (theta_8 = 8).
  traj, nc = _rollback_run(crazy, {9: 5.0, 10: 5.0, 11: 5.0})
  assert int(nc.n_jumps) == 1 and float(traj[9]["w"][0]) == 108.0
  # Calls 9, 10, 11 see losses 5 > 1.5 x 1: the call with count 11 returns to theta_8.
  assert int(nc.n_rollbacks) == 1 and float(traj[12]["w"][0]) == 8.0
  assert float(nc.horizon_scale) == 0.5


@pytest.mark.parametrize("blowup", [200.0, np.inf, np.nan])
def test_rollback_at_once_when_the_loss_blows_up(blowup):
  """A loss above ``rollback_limit`` (100) times the pre-jump mean, or non-finite, right after the jump
  (call 9) undoes the jump at that call, not at the window's end (call 11), and closes the window: the
  high losses of calls 10 and 11 do not undo it twice. With ``rollback_limit=None`` only the end counts."""
  crazy = marker_predictor(lambda h, t, k: h[-1] + 100.0)
  losses = {9: blowup, 10: 5.0, 11: 5.0}
  traj, nc = _rollback_run(crazy, losses, calls=14)
  assert int(nc.n_rollbacks) == 1 and float(traj[10]["w"][0]) == 8.0
  assert int(nc.rollback.last_rollback_step) == 9
  assert float(traj[14]["w"][0]) == 12.0  # back to the base's steps from theta_8
  assert float(nc.horizon_scale) == 0.5
  traj, nc = _rollback_run(crazy, losses, calls=14, rollback_limit=None)
  assert int(nc.n_rollbacks) == 1 and float(traj[10]["w"][0]) == 109.0 and float(traj[12]["w"][0]) == 8.0
  traj, nc = _rollback_run(crazy, {9: 90.0, 10: 1.0, 11: 1.0}, calls=14)  # 90x: below the limit
  assert int(nc.n_rollbacks) == 1 and float(traj[12]["w"][0]) == 8.0  # the settled mean still too high


def test_no_rollback_when_the_loss_stays_low():
  crazy = marker_predictor(lambda h, t, k: h[-1] + 100.0)
  traj, nc = _rollback_run(crazy, {9: 1.2, 10: 1.0, 11: 1.1})
  assert int(nc.n_rollbacks) == 0 and float(traj[12]["w"][0]) == 111.0
  assert float(nc.horizon_scale) == 1.0


def test_rollback_judges_the_settled_loss_not_the_spike_after_a_jump():
  """The FM-16 shape: a good jump's first steps spike, then the loss settles below its pre-jump level.

  Interval 256: the jump is the call with count 512 and the default window is 50 steps. The mean of the
  first 11 steps after the jump (1.70x) would undo it; the running mean at the check (0.92x) keeps it. A
  loss that stays high (1.6x) is still undone."""
  crazy = marker_predictor(lambda h, t, k: h[-1] + 100.0)
  spike = {513: 3.0, 514: 2.0, **{c: 1.6 for c in range(515, 523)}, **{c: 0.9 for c in range(523, 570)}}
  traj, nc = _rollback_run(crazy, spike, window=None, interval=256, calls=570)
  assert int(nc.n_jumps) == 1 and float(traj[513]["w"][0]) == 612.0
  assert int(nc.n_rollbacks) == 0 and float(traj[570]["w"][0]) == 669.0
  traj, nc = _rollback_run(crazy, {c: 1.6 for c in range(513, 570)}, window=None, interval=256, calls=570)
  # The check is the call with count 512 + 1 + 50 = 563: it returns to theta_512.
  assert int(nc.n_rollbacks) == 1 and float(traj[564]["w"][0]) == 512.0


def _momentum_rollback_run(base_inside: bool, calls: int = 13):
  """SGD + momentum under a scripted loss: the jump (count 8) lands 100 ahead and the gradient there is
  100x; calls 9-11 see loss 5, so the call with count 11 rolls back to theta_8."""
  crazy = marker_predictor(lambda h, t, k: h[-1] + 100.0)
  sgd = optax.sgd(0.1, momentum=0.9)
  kw = dict(interval=4, ctx=2, horizon=2, rollback_factor=1.5, rollback_window=2)
  tx = (onc.nowcast(crazy, base=sgd, **kw) if base_inside else
        optax.chain(sgd, onc.nowcast(crazy, **kw)))
  steep = lambda p: {"w": jnp.where(p["w"] > 50.0, 100.0, -1.0)}  # steep on the far side of the jump
  return _scripted_run(tx, {9: 5.0, 10: 5.0, 11: 5.0}, calls, grad=steep)


def test_nowcast_with_base_is_the_chain_without_rollback():
  """``nowcast(..., base=b)`` makes the same updates as ``optax.chain(b, nowcast(...))``, jumps included."""
  grads = [{"w": jnp.full((3,), 0.1 * i - 0.5), "b": jnp.arange(2.0) - i} for i in range(14)]
  params = {"w": jnp.zeros(3), "b": jnp.ones(2)}
  out = []
  for tx in (optax.chain(optax.adamw(0.1), onc.nowcast(onc.predictors.linefit_plus(), interval=2, ctx=3)),
             onc.nowcast(onc.predictors.linefit_plus(), interval=2, ctx=3, base=optax.adamw(0.1))):
    p, s = params, tx.init(params)
    for g in grads:
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
    out.append((p, onc.find_nowcast_state(s)))
  chex.assert_trees_all_equal(out[0][0], out[1][0])
  assert int(out[1][1].n_jumps) == int(out[0][1].n_jumps) == 2
  assert s.base_at_jump == ()  # no copy of the base state without rollback


def test_rollback_with_base_restores_the_base_state_at_the_jump():
  """Chained, the rollback returns w to theta_8 but the momentum keeps the 100x gradients seen after the
  jump; with ``base=`` the momentum is back at its value when the jump step began (the step count keeps
  counting), so training resumes as if the jump had never been made."""
  chained, chained_states = _momentum_rollback_run(False)
  inside, states = _momentum_rollback_run(True)
  for traj, st in ((chained, chained_states[-1]), (inside, states[-1])):
    nc = onc.find_nowcast_state(st)
    assert int(nc.n_jumps) == 1 and int(nc.n_rollbacks) == 1
    np.testing.assert_allclose(traj[12]["w"], traj[8]["w"], rtol=1e-6)  # theta_8 restored
  trace_at_jump = states[8].base[0].trace["w"]  # sgd's momentum when the jump step (count 8) began
  np.testing.assert_array_equal(states[12].base_at_jump[0].trace["w"], trace_at_jump)
  np.testing.assert_array_equal(states[12].base[0].trace["w"], trace_at_jump)
  assert float(jnp.abs(chained_states[12][0][0].trace["w"]).max()) > 100.0  # the chain kept the bad gradients
  # From (theta_8, momentum at 8) the next step is the one the jump step would have made without the jump.
  np.testing.assert_allclose(inside[13]["w"] - inside[12]["w"], 0.9 * trace_at_jump * -0.1 + 0.1, rtol=1e-6)
  assert float(chained[13]["w"][0] - chained[12]["w"][0]) < -10.0  # chained: pushed back hard


def test_nowcast_base_must_be_a_transformation():
  with pytest.raises(ValueError, match="base must be an optax.GradientTransformation"):
    onc.nowcast(onc.predictors.linefit(), interval=4, base=optax.adam)


def test_rollback_arguments():
  lf = onc.predictors.linefit()
  with pytest.raises(ValueError, match="rollback_window .* must be < interval - 1"):
    onc.nowcast(lf, interval=4, ctx=2, rollback_factor=1.5, rollback_window=3)
  with pytest.raises(ValueError, match="rollback_factor must be a positive number"):
    onc.nowcast(lf, interval=4, rollback_factor=0.0)
  with pytest.raises(ValueError, match="rollback_limit must be a positive number"):
    onc.nowcast(lf, interval=8, rollback_factor=1.5, rollback_limit=-1.0)
  tx = onc.nowcast(lf, interval=4, ctx=2, rollback_factor=1.5, rollback_window=1)
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="value=loss"):
    tx.update({"w": jnp.zeros(2)}, state, {"w": jnp.zeros(2)})


@pytest.mark.parametrize("rollback", [False, True])
def test_host_memory_history_gives_the_same_run(rollback):
  """history_memory="host": the stored states live in host memory and jitted training gives the same run."""
  task_params = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3, jnp.bfloat16)}
  extra = {"rollback_factor": 1.01, "rollback_window": 1} if rollback else {}

  def run(memory):
    tx = optax.chain(optax.adam(0.1), onc.nowcast(onc.predictors.linefit(), interval=3, ctx=3, horizon=4,
                                                  history_memory=memory, **extra))
    loss_fn = lambda p: jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum((p["b"].astype(jnp.float32) + 1.0) ** 2)

    @jax.jit
    def step(p, s):
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = tx.update(g, s, p, value=loss)
      return optax.apply_updates(p, u), s

    p, s = task_params, tx.init(task_params)
    if memory == "host":
      assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(s[1].history))
    for _ in range(30):
      p, s = step(p, s)
    if memory == "host":
      assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(s[1].history))
    return p, s[1]

  (p_dev, nc_dev), (p_host, nc_host) = run("device"), run("host")
  assert int(nc_host.n_jumps) == int(nc_dev.n_jumps) >= 2
  assert int(nc_host.n_rollbacks) == int(nc_dev.n_rollbacks)
  for a, b in zip(jax.tree.leaves(p_dev), jax.tree.leaves(p_host), strict=True):
    assert a.dtype == b.dtype
    # Without rollback bit-identical; the rollback's select is fused differently (1 ulp).
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-6 if rollback else 0)
  with pytest.raises(ValueError, match="history_memory must be 'device' or 'host'"):
    onc.nowcast(onc.predictors.linefit(), interval=3, history_memory="disk")


def _matmul_predictor():
  """A user predictor whose prediction is a float32 matrix product (the last state times identity)."""
  def predict(history, times, k, state):
    del times, k
    return jax.tree.map(lambda h: (h[-1].reshape(1, -1) @ jnp.eye(h[-1].size)).reshape(h.shape[1:]),
                        history), state
  return onc.predictors.Predictor(init=onc.predictors.no_state, predict=predict, name="matmul")


@pytest.mark.parametrize("which", ["user", "user-farcast", "wnn", "wnn_plus", "nino"])
def test_jump_products_run_at_full_precision(which):
  """Every matrix product of a jump is traced at HIGHEST precision (float32, not TF32 or bfloat16 passes
  on accelerators), whatever the default: on an H200 the default left three parity tests off by > 2e-5.
  (The line fits and LFD-2 multiply elementwise: they have no product to check.)"""
  params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
                       "Dense_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}}
  p = onc.predictors
  if which == "user-farcast":
    tx = onc.farcast(_matmul_predictor(), n=5, unit=1, horizon=3)
  else:
    pred = {"user": _matmul_predictor, "wnn": p.wnn, "wnn_plus": p.wnn_plus, "nino": p.nino}[which]()
    tx = onc.nowcast(pred, interval=1, ctx=max(pred.min_ctx, 2), horizon=3)
  state = tx.init(params)
  text = jax.jit(tx.update).lower(params, state, params).as_text()
  ops = [line for line in text.splitlines()
         if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
  assert ops
  assert all("HIGHEST" in line for line in ops), [line for line in ops if "HIGHEST" not in line][:3]
