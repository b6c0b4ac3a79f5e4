"""Every bad argument fails at construction or init/update with a message naming it and the fix."""

import jax.numpy as jnp
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast import schedules

LINEFIT = onc.predictors.linefit()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(interval=0), r"interval must be >= 1, got 0\. interval is the number of optimizer"),
        (dict(interval=2.0), r"interval must be an int, got 2\.0"),
        (dict(interval=True), r"interval must be an int"),
        (dict(interval=5, ctx=1), r"ctx must be >= 2, got 1\. ctx is the number of recorded"),
        (dict(interval=5, ctx=3, period=10),
         r"period: jumps 10 steps apart are shorter than ctx \* interval = 3 \* 5 = 15.*"
         r"Use a period of at least 15 steps"),
        (dict(interval=5, ctx=3, period=schedules.dynamic_period(15, 40, total_steps=100)),
         None),
        (dict(interval=10, ctx=3, period=schedules.dynamic_period(15, 40, total_steps=100)),
         r"period: jumps 15 steps apart are shorter than ctx \* interval = 3 \* 10 = 30"),
        (dict(interval=5, period="often"), r"period must be None, an int or a schedules"),
        (dict(interval=5, horizon=-2), r"horizon must be >= 0 intervals, got -2"),
        (dict(interval=5, horizon=1.5), r"horizon must be None, an int \(intervals\)"),
        (dict(interval=5, history_dtype=jnp.int8), r"history_dtype must be a float dtype"),
        (dict(interval=5, history_dtype="not-a-dtype"), r"history_dtype must be a float dtype"),
        (dict(interval=5, period=10, horizon=schedules.k_decay(5, total_steps=20)), None),
        (dict(interval=5, period=50, horizon=schedules.k_decay(5, total_steps=20)),
         r"k_decay\(total_steps=20\) allows no jump"),
    ],
)
def test_construction_errors(kwargs, match):
  kwargs = {"ctx": 2, **kwargs}
  if match is None:
    onc.nowcast(LINEFIT, **kwargs)  # valid combinations construct fine
    return
  with pytest.raises(ValueError, match=match):
    onc.nowcast(LINEFIT, **kwargs)


def test_predictor_must_be_a_predictor():
  with pytest.raises(ValueError, match=r"predictor must be an optax_nowcast.predictors.Predictor"):
    onc.nowcast(lambda history: history, interval=5)


def test_predictor_minimum_context_is_enforced():
  needs_five = LINEFIT._replace(name="needs-five", min_ctx=5)
  with pytest.raises(ValueError, match=r"ctx must be >= 5.*needs-five needs at least 5"):
    onc.nowcast(needs_five, interval=5, ctx=3)


def test_update_without_params_explains_why():
  tx = optax.chain(optax.adam(1e-3), onc.nowcast(LINEFIT, interval=2))
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"nowcast needs the current parameters.*"
                                       r"tx.update\(updates, state, params\)"):
    tx.update(params, state)


def test_init_without_params():
  with pytest.raises(ValueError, match=r"nowcast.init needs the parameters"):
    onc.nowcast(LINEFIT, interval=2).init(None)
