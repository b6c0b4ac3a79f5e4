"""Property-based tests (hypothesis) of nowcast over random pytrees, dtypes and magnitudes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optax_nowcast as onc

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32]
shapes = st.sampled_from([(), (0,), (1,), (3,), (2, 3), (4, 1, 2)])


@st.composite
def leaves(draw):
  dtype = draw(st.sampled_from(DTYPES))
  shape = draw(shapes)
  scale = draw(st.sampled_from([1e-6, 1.0, 1e3]))
  seed = draw(st.integers(0, 2**16))
  x = np.random.default_rng(seed).normal(size=shape) * scale
  return jnp.asarray(np.round(x) if dtype == jnp.int32 else x, dtype)


pytrees = st.recursive(leaves(), lambda children: st.one_of(
    st.lists(children, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(list("abcde")), children, min_size=1, max_size=3)), max_leaves=8)


def _is_float(x):
  return jnp.issubdtype(x.dtype, jnp.floating)


def _run(params, direction, steps, horizon=2, **kw):
  """SGD with a constant gradient (a straight-line trajectory) plus nowcast(linefit), jitted."""
  tx = optax.chain(optax.sgd(1.0), onc.nowcast(onc.predictors.linefit(), interval=1, ctx=3, horizon=horizon,
                                                            **kw))
  grads = jax.tree.map(lambda d, p: (-d).astype(p.dtype) if _is_float(p) else jnp.zeros_like(p),
                       direction, params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.tree.map(lambda g, p: g if _is_float(p) else jnp.zeros_like(p), grads, p), s, p)
    return jax.tree.map(lambda p, u: p + u.astype(p.dtype) if _is_float(p) else p, p, u), s

  s = tx.init(params)
  traj = [params]
  for _ in range(steps):
    params, s = step(params, s)
    traj.append(params)
  return traj, onc.find_nowcast_state(s)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pytrees)
def test_structure_dtypes_and_ints_survive_a_jump(params):
  direction = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5 if _is_float(p) else p, params)
  traj, nc = _run(params, direction, 4)  # records at 0, 1, 2 ... jump at the call with count 3
  out = traj[-1]
  assert jax.tree.structure(out) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    if not _is_float(b):
      np.testing.assert_array_equal(a, b)  # non-float leaves are never touched
    else:
      assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)) | ~jnp.isfinite(b.astype(jnp.float32))))
  # One jump (applied or rejected); none when there is no float leaf to predict.
  has_float = any(_is_float(p) for p in jax.tree.leaves(params))
  assert int(nc.n_jumps) + int(nc.n_rejected) == int(has_float)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([1e-3, 1.0, 1e4]), shapes)
def test_linear_trajectories_are_extrapolated_exactly(seed, scale, shape):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)}
  direction = {"w": jnp.asarray(rng.normal(size=shape) * scale * 0.01, jnp.float32)}
  traj, nc = _run(params, direction, 4)
  # States after 1, 2, 3 updates are w0 + d, w0 + 2d, w0 + 3d; the jump goes 2 intervals ahead: w0 + 5d.
  want = params["w"] + 5 * direction["w"]
  np.testing.assert_allclose(traj[-1]["w"], want, rtol=1e-5, atol=1e-5 * scale)
  assert int(nc.n_jumps) == 1


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([jnp.float16, jnp.bfloat16, jnp.float32]), st.integers(0, 2**16))
def test_overflowing_predictions_are_rejected(dtype, seed):
  eighth = float(jnp.finfo(dtype).max) / 8
  params = {"w": jnp.full((3,), eighth, dtype)}
  direction = {"w": jnp.full((3,), eighth, dtype)}  # the states reach max/2; 10 intervals on overflows
  traj, nc = _run(params, direction, 4, horizon=10)
  assert bool(jnp.all(jnp.isfinite(traj[-2]["w"].astype(jnp.float32))))
  assert int(nc.n_rejected) == 1 and int(nc.n_jumps) == 0
  assert traj[-1]["w"].dtype == dtype


def test_absurd_jumps_are_rejected_by_max_jump_ratio():
  params = {"w": jnp.zeros(4)}
  direction = {"w": jnp.ones(4) * 0.1}
  # A predictor that jumps 1000 x farther than the trajectory moves.
  crazy = onc.Predictor(init=onc.predictors.no_state,
                        predict=lambda h, t, k, s: (jax.tree.map(lambda x: x[-1] + 1000.0, h), s))
  for ratio, jumped in [(None, True), (10.0, False), (1e6, True)]:
    tx = optax.chain(optax.sgd(1.0), onc.nowcast(crazy, interval=1, ctx=3, horizon=2, max_jump_ratio=ratio))
    s, p = tx.init(params), params
    for _ in range(4):
      u, s = tx.update(jax.tree.map(lambda d: -d, direction), s, p)
      p = optax.apply_updates(p, u)
    nc = onc.find_nowcast_state(s)
    assert (int(nc.n_jumps), int(nc.n_rejected)) == ((1, 0) if jumped else (0, 1)), ratio
    assert float(p["w"][0]) > 100 if jumped else abs(float(p["w"][0]) - 0.4) < 1e-6
  with pytest.raises(ValueError, match="max_jump_ratio must be a positive number"):
    onc.nowcast(crazy, interval=1, ctx=3, max_jump_ratio=-1.0)


@st.composite
def any_leaves(draw):
  """Leaves of every dtype a params tree may hold, bool included."""
  if draw(st.booleans()) and draw(st.booleans()):
    seed = draw(st.integers(0, 2**16))
    return jnp.asarray(np.random.default_rng(seed).random(draw(shapes)) > 0.5)
  return draw(leaves())


any_pytrees = st.recursive(any_leaves(), lambda children: st.dictionaries(
    st.sampled_from(list("abcde")), children, min_size=1, max_size=3), max_leaves=6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_pytrees, st.sampled_from([1, 2, 3]), st.sampled_from([2, 3, 4]),
       st.sampled_from(["constant", "longer", "dynamic"]), st.integers(0, 2**16))
def test_jumps_only_at_scheduled_steps_and_other_updates_untouched(params, interval, ctx, period, seed):
  """Over random pytrees (f32, bf16, f16, int, bool), intervals, ctx and period schedules: a jump (made or
  rejected) happens exactly at the steps the host schedule names; every other update is the base
  optimizer's, bit for bit; dtypes and shapes are kept; non-float leaves never change."""
  base = optax.adam(1e-2)
  per = {"constant": None, "longer": ctx * interval + 3,
         "dynamic": onc.schedules.dynamic_period(ctx * interval, 3 * ctx * interval, total_steps=40)}[period]
  tx = optax.chain(base, onc.nowcast(onc.predictors.linefit(), interval=interval, ctx=ctx, horizon=2,
                                     period=per))
  rng = np.random.default_rng(seed)
  grads_seq = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype) if _is_float(p)
                            else jnp.zeros_like(p), params) for _ in range(4)]

  @jax.jit
  def step(p, s, g):
    u, s2 = tx.update(g, s, p)
    u_base, _ = base.update(g, s[0], p)
    return optax.apply_updates(p, u), s2, u, u_base

  s = tx.init(params)
  p = params
  events = []
  for t in range(30):
    before = onc.find_nowcast_state(s)
    p, s, u, u_base = step(p, s, grads_seq[t % 4])
    after = onc.find_nowcast_state(s)
    jumped = int(after.n_jumps + after.n_rejected) > int(before.n_jumps + before.n_rejected)
    if jumped:
      events.append(t)
    else:
      for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_base), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  has_float = any(_is_float(x) for x in jax.tree.leaves(params))  # an empty float leaf counts
  expected = [t for t in range(30) if onc.nowcast_phase(t, interval=interval, ctx=ctx, period=per) == "full"]
  if has_float:
    assert events == expected, (events, expected)
  else:
    assert events == []
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    if not _is_float(b):
      np.testing.assert_array_equal(a, b)
