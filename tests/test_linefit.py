"""linefit and linefit+ against an independent numpy fit, and the per-coordinate lifting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import numpy_linefit

from optax_nowcast import predictors


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [0, 1, 7])
def test_matches_numpy_polyfit(weighted, k):
  rng = np.random.default_rng(0)
  states = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
  history = {"w": jnp.stack(states)}
  p = predictors.linefit_plus() if weighted else predictors.linefit()
  pred, _ = p.predict(history, jnp.arange(-4.0, 1.0), jnp.int32(k), ())
  np.testing.assert_allclose(pred["w"], numpy_linefit(states, k, weighted), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_linear_trajectory_is_extrapolated_exactly(weighted):
  slope, offset = np.float32(0.25), np.float32(1.5)
  times = jnp.arange(-4.0, 1.0)
  history = {"w": (offset + slope * times)[:, None] * jnp.ones((1, 3))}
  p = predictors.linefit_plus() if weighted else predictors.linefit()
  pred, _ = p.predict(history, times, jnp.int32(6), ())
  np.testing.assert_allclose(pred["w"], offset + slope * 6.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_closed_form_equals_vmapped_scalar_fit(weighted):
  rng = np.random.default_rng(1)
  history = {"a": jnp.asarray(rng.normal(size=(5, 7, 2)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  times = jnp.asarray([-6.0, -4.0, -3.0, -1.0, 0.0])  # irregular spacing too
  scalar = predictors.per_coordinate(
      functools.partial(predictors.linefit_trajectory, weighted=weighted))
  p = predictors.linefit_plus() if weighted else predictors.linefit()
  fast, _ = jax.jit(p.predict)(history, times, jnp.int32(3), ())
  slow = scalar(history, times, jnp.int32(3))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), fast, slow)


def test_linefit_plus_weights_recent_states_more():
  # A trajectory that bends: linefit+ follows the recent slope more closely than linefit.
  times = jnp.arange(-4.0, 1.0)
  w = jnp.asarray([0.0, 0.0, 0.0, 1.0, 2.0])[:, None]
  plain, _ = predictors.linefit().predict({"w": w}, times, 1, ())
  plus, _ = predictors.linefit_plus().predict({"w": w}, times, 1, ())
  assert float(plus["w"][0]) > float(plain["w"][0])


def test_bfloat16_history_is_computed_in_float32_and_cast_back():
  times = jnp.arange(-4.0, 1.0)
  h = (jnp.arange(5.0)[:, None] * jnp.ones((1, 8))).astype(jnp.bfloat16)
  pred, _ = predictors.linefit().predict({"w": h}, times, 3, ())
  assert pred["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(pred["w"], np.float32), 7.0)
