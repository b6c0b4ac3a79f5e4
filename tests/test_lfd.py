"""LFD-2 farcasting: Proposition 1, the L_grad term, training, the two-copy farcast mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast.predictors.lfd import apply_lfd, init_lfd, lfd2, lfd_loss, lfd_spec, train_lfd


def affine_sequences(rng, num, d, length, c, dvals):
  """w_{t+1} = c * w_t + d per coordinate (c, d fixed for the family), random starting points."""
  w = np.zeros((num, d, length))
  w[..., 0] = rng.normal(size=(num, d))
  for t in range(1, length):
    w[..., t] = c * w[..., t - 1] + dvals
  return w.astype(np.float32)


def test_proposition_1_affine_recurrences_are_forecast_exactly():
  """A 2 x m linear map fitted on [w_0, w_n] forecasts w_{n+j} of w_{t+1} = c w_t + d exactly."""
  rng = np.random.default_rng(0)
  n, m = 20, 30
  seqs = affine_sequences(rng, 40, 3, n + 1 + m, c=0.97, dvals=0.05)
  spec = lfd_spec("lfd2", n, m)
  x = seqs[..., : n + 1].reshape(-1, n + 1)
  y = seqs[..., n + 1:].reshape(-1, m)
  # Closed form: w_t = c^t w_0 + d (1 - c^t)/(1 - c); least squares over [w_0, w_n, 1] is exact.
  design = np.stack([x[:, 0], x[:, n], np.ones(len(x))], 1)
  coef, *_ = np.linalg.lstsq(design.astype(np.float64), y.astype(np.float64), rcond=None)
  params = {"A": jnp.asarray(coef[:2], jnp.float32), "b": jnp.asarray(coef[2], jnp.float32)}
  with jax.default_matmul_precision("highest"):  # float32 products on GPU/TPU too (the lfd2 predictor's)
    np.testing.assert_allclose(apply_lfd(params, spec, jnp.asarray(x)), y, atol=2e-5)
    # And on fresh sequences of the same recurrence.
    fresh = affine_sequences(np.random.default_rng(1), 10, 3, n + 1 + m, c=0.97, dvals=0.05)
    np.testing.assert_allclose(apply_lfd(params, spec, jnp.asarray(fresh[..., : n + 1])),
                               fresh[..., n + 1:], atol=5e-5)


def test_training_recovers_the_affine_forecast():
  rng = np.random.default_rng(2)
  n, m = 10, 15
  seqs = affine_sequences(rng, 120, 2, n + 1 + m, c=0.9, dvals=0.02)
  spec = lfd_spec("lfd2", n, m)
  res = train_lfd(spec, seqs[:100], seqs[100:], beta=0.0, learning_rate=3e-2, max_steps=4000, patience=20)
  repeat_last = float(np.mean(np.abs(seqs[100:, :, n:n + 1] - seqs[100:, :, n + 1:])))
  assert res.best_val_mae < 0.05 * repeat_last, (res.best_val_mae, repeat_last)


def test_l_grad_penalises_a_last_step_larger_than_the_first():
  spec = lfd_spec("lfd2", n=2, m=3)
  x = jnp.asarray([[[0.0, 0.1, 0.2]]])  # first step |w1 - w0| = 0.1
  y = jnp.zeros((1, 1, 3))
  params = {"A": jnp.zeros((2, 3)), "b": jnp.asarray([0.0, 0.0, 0.5])}  # last predicted step 0.5
  l1 = float(jnp.mean(jnp.abs(apply_lfd(params, spec, x) - y)))
  np.testing.assert_allclose(float(lfd_loss(params, spec, x, y, beta=1.0)), l1 + (0.5 - 0.1), rtol=1e-6)
  params["b"] = jnp.asarray([0.0, 0.0, 0.05])  # a smaller last step costs nothing
  l1 = float(jnp.mean(jnp.abs(apply_lfd(params, spec, x) - y)))
  np.testing.assert_allclose(float(lfd_loss(params, spec, x, y, beta=1.0)), l1, rtol=1e-6)


def test_specs_and_errors():
  assert lfd_spec("lfs", 20).inputs == (20, 14, 8, 0)
  assert lfd_spec("lfn", 4).inputs == (0, 1, 2, 3, 4)
  assert init_lfd(lfd_spec("lfl", 5, 7))["A"].shape == (1, 7)
  with pytest.raises(ValueError, match="kind must be one of"):
    lfd_spec("lfd3")
  with pytest.raises(ValueError, match="only LFD-2"):
    lfd2(init_lfd(lfd_spec("lfn", 3, 4)), lfd_spec("lfn", 3, 4))


def test_farcast_keeps_two_copies_and_jumps_on_schedule():
  n, m, k = 4, 8, 6
  spec = lfd_spec("lfd2", n, m)
  j = jnp.arange(1, m + 1) / n
  line = {"A": jnp.stack([-j, 1 + j]), "b": jnp.zeros(m)}  # extrapolates the line through w_0, w_n
  params = {"w": jnp.zeros((3, 5)), "b": jnp.zeros(5), "count": jnp.zeros((), jnp.int32)}
  tx = onc.farcast(lfd2(line, spec), n=n, horizon=k, unit=2)
  state = tx.init(params)
  float_bytes = sum(x.nbytes for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating))
  assert sum(x.nbytes for x in jax.tree.leaves(state.anchor)) == float_bytes  # one copy (+ params = 2)
  step = jax.jit(tx.update)
  history = [params]
  for _ in range(20):
    ones = jax.tree.map(lambda p: jnp.ones_like(p) if p.dtype != jnp.int32 else jnp.zeros_like(p), params)
    u, state = step(ones, state, params)
    params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), params, u)
    history.append(params)
  # Anchor at step 0, jump at the call with count n * unit = 8 (w_8 = 8): lands on 8 + k * unit = 20.
  assert float(history[9]["w"][0, 0]) == 20.0
  # Next anchor: step 9 (w = 20); the jump at count 17 (w = 28) lands at 28 + 12 = 40.
  assert float(history[18]["w"][0, 0]) == 40.0
  assert int(state.n_jumps) == 2 and int(history[-1]["count"]) == 0


def test_farcast_max_jump_ratio_rejects_absurd_jumps_only():
  # The line fit from w_0 = 0 to w_4 = 4 jumps k = 6 units to 10: a jump of 6 (1x the line's own jump);
  # a predictor that adds 1000 makes a jump of 1006.
  n, m, k = 4, 8, 6
  spec = lfd_spec("lfd2", n, m)
  j = jnp.arange(1, m + 1) / n
  line = {"A": jnp.stack([-j, 1 + j]), "b": jnp.zeros(m)}
  crazy = {"A": line["A"], "b": jnp.full(m, 1000.0)}
  for weights, ratio, jumped in [(line, 1.01, True), (crazy, None, True), (crazy, 10.0, False),
                                 (crazy, 1e3, True)]:
    tx = optax.chain(optax.sgd(1.0), onc.farcast(lfd2(weights, spec), n=n, horizon=k, max_jump_ratio=ratio))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for _ in range(5):  # w moves +1 per step; the 5th call sees w_4 = 4
      u, state = tx.update({"w": -jnp.ones(3)}, state, params)
      params = optax.apply_updates(params, u)
    fc = onc.find_nowcast_state(state)
    assert (int(fc.n_jumps), int(fc.n_rejected)) == ((1, 0) if jumped else (0, 1)), (ratio, jumped)
    expected = 5.0 if not jumped else (10.0 if weights is line else 1010.0)
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="max_jump_ratio must be a positive number"):
    onc.farcast(lfd2(line, spec), n=n, horizon=k, max_jump_ratio=0.0)
