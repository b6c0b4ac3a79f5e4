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
