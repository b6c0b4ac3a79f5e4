"""Checkpoint and resume: the whole optimizer state round-trips through Orbax, bit for bit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast.tasks import make_task

ocp = pytest.importorskip("orbax.checkpoint")


def _setup():
  task = make_task("digits")
  tx = optax.chain(optax.adam(3e-3), onc.nowcast(onc.predictors.linefit_plus(), interval=4, ctx=3,
                                                 horizon=2, history_dtype=jnp.bfloat16))
  params = task.init(jax.random.PRNGKey(0))
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, idx):
    g = jax.grad(task.loss)(params, idx)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return task, tx, params, step


def _run(step, params, opt_state, task, start, stop):
  for s in range(start, stop):
    params, opt_state = step(params, opt_state, jnp.asarray(task.batch_indices(0, s, 1)[0]))
  return params, opt_state


def test_resume_mid_period_is_bit_identical(tmp_path):
  task, tx, params, step = _setup()
  ref_p, ref_s = _run(step, params, tx.init(params), task, 0, 40)
  assert int(onc.find_nowcast_state(ref_s).n_jumps) == 3  # jumps at steps 12, 24, 36

  task, tx, params, step = _setup()
  p, s = _run(step, params, tx.init(params), task, 0, 17)  # stop between two recordings of a period
  assert int(onc.find_nowcast_state(s).filled) == 1
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"params": p, "opt_state": s})
  ckpt.wait_until_finished()
  del p, s
  target = {"params": params, "opt_state": tx.init(params)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = ckpt.restore(tmp_path / "ckpt", abstract)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(target["opt_state"])
  hist = onc.find_nowcast_state(restored["opt_state"]).history
  assert jax.tree.leaves(hist)[0].dtype == jnp.bfloat16
  p, s = _run(step, restored["params"], restored["opt_state"], task, 17, 40)
  for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((ref_p, ref_s)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _option_tx(option: str) -> optax.GradientTransformation:
  if option == "farcast":
    return optax.chain(optax.adam(3e-3), onc.farcast(onc.predictors.lfd2(), n=5, unit=2, horizon=3))
  kw: dict = {"interval": 4, "ctx": 3, "horizon": 2}
  pred = onc.predictors.linefit_plus()
  if option == "host":
    kw["history_memory"] = "host"
  elif option in ("rollback", "rollback_base"):
    kw.update(rollback_factor=1.01, rollback_window=2)
    if option == "rollback_base":  # the base's state at the jump rides along too
      return onc.nowcast(pred, base=optax.adam(3e-3), **kw)
  elif option == "nino":
    pred, kw["ctx"], kw["interval"] = onc.predictors.nino(), 5, 3
  elif option == "period_and_rate_clock":  # every window field in use
    kw.update(period=onc.schedules.dynamic_period(12, 24, total_steps=60),
              learning_rate=optax.linear_schedule(3e-3, 1e-3, 60))
  return optax.chain(optax.adam(3e-3), onc.nowcast(pred, **kw))


OPTIONS = ["host", "farcast", "rollback", "rollback_base", "nino", "int_leaves", "period_and_rate_clock"]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_resumes_bit_for_bit(tmp_path, option):
  """Saved mid-period with ``onc.checkpoint.save`` and restored into a fresh state's layout with
  ``onc.checkpoint.restore``, every option's run continues as the uninterrupted one, bit for bit (the
  rollback's running means included; NaN equals NaN)."""
  task = make_task("digits")
  tx = _option_tx(option)
  params = task.init(jax.random.PRNGKey(0))
  if option == "int_leaves":  # integer leaves ride along untouched
    params = {**params, "calls": jnp.zeros((), jnp.int32)}

  def loss(p, idx):
    return task.loss({"params": p["params"]}, idx)

  @jax.jit
  def step(p, s, idx):
    value, g = jax.value_and_grad(loss, allow_int=True)(p, idx)
    g = jax.tree.map(lambda x, q: jnp.zeros_like(q) if not jnp.issubdtype(q.dtype, jnp.floating) else x,
                     g, p)
    u, s = tx.update(g, s, p, value=value)
    return optax.apply_updates(p, u), s

  def run(p, s, start, stop):
    for t in range(start, stop):
      p, s = step(p, s, jnp.asarray(task.batch_indices(0, t, 1)[0]))
    return p, s

  ref = run(params, tx.init(params), 0, 40)
  p, s = run(params, tx.init(params), 0, 17)
  onc.checkpoint.save(tmp_path / "ckpt", {"params": p, "opt_state": s})
  restored = onc.checkpoint.restore(tmp_path / "ckpt", {"params": params, "opt_state": tx.init(params)})
  out = run(restored["params"], restored["opt_state"], 17, 40)
  state = onc.find_nowcast_state(ref[1])
  assert int(state.n_jumps) >= 2
  if option == "host":
    assert {x.sharding.memory_kind for x in jax.tree.leaves(
        onc.find_nowcast_state(restored["opt_state"]).history)} == {"pinned_host"}
  if option.startswith("rollback"):
    assert int(state.n_rollbacks) >= 1  # a rollback happened in the resumed part
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree.leaves(ref), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
