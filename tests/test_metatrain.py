"""Trajectory collection: vmapped runs equal plain training, the on-disk format, resumption."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast.metatrain import collect, estimate_bytes, load_run, plan_runs, unflatten
from optax_nowcast.tasks import make_task


def test_collect_digits_vmapped_equals_plain_training(tmp_path):
  runs = plan_runs([0, 1], lr_scales=[1.0, 2.0])
  assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
  assert estimate_bytes("digits", runs, 100, 20) == 4 * 6 * 26122 * 2
  res = collect("digits", runs, steps=100, interval=20, out_dir=str(tmp_path), vmap=3, dtype=np.float32,
                quiet=True)
  assert sorted(res["computed"]) == sorted(r.run_id for r in runs)
  task = make_task("digits")
  run = runs[3]  # seed 1, lr x 2: trained in the second vmap group (of 1)
  states, meta = load_run(str(tmp_path / "digits" / run.run_id))
  assert states.shape == (6, 26122) and meta["steps"] == [0, 20, 40, 60, 80, 100] and meta["complete"]
  # The same run trained alone, without vmap or inject_hyperparams.
  tx = optax.adam(task.spec.learning_rate * 2.0)
  params = task.init(jax.random.PRNGKey(1))
  opt_state = tx.init(params)
  np.testing.assert_allclose(states[0], np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)]))
  for s in range(100):
    g = jax.grad(task.loss)(params, jnp.asarray(task.batch_indices(1, s, 1)[0]))
    u, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, u)
  back = unflatten(states[-1], meta, params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    # Batched and plain matmuls round differently and Adam amplifies it on a few coordinates.
    assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-3 * np.linalg.norm(np.asarray(b))
  again = collect("digits", runs, steps=100, interval=20, out_dir=str(tmp_path), quiet=True)
  assert again["computed"] == [] and len(again["skipped"]) == 4


def test_collect_train_load_nowcast_on_digits(tmp_path):
  """The whole pipeline, small: collect digits runs, train WNN+, save, load, nowcast with it."""
  from optax_nowcast import nowcast, schedules
  from optax_nowcast.metatrain import TrainConfig, find_runs, load_predictor_params, train_wnn_plus
  from optax_nowcast.predictors import wnn_plus

  collect("digits", plan_runs(range(5)), steps=400, interval=20, out_dir=str(tmp_path / "traj"), vmap=5,
          quiet=True)
  runs = find_runs(str(tmp_path / "traj"))
  assert len(runs) == 5
  cfg = TrainConfig(horizons=5, hidden=32, steps=150, windows_per_batch=4, elements_per_window=512,
                    learning_rate=3e-3)
  res = train_wnn_plus(runs, cfg, out_dir=str(tmp_path / "weights"), log=lambda *_: None)
  assert res["train_runs"] == 4 and res["val_runs"] == 1
  assert res["val_loss"] < res["initial_val_loss"], (res["initial_val_loss"], res["val_loss"])
  params, config = load_predictor_params(str(tmp_path / "weights" / "wnn_plus.msgpack"))
  task = make_task("digits")
  tx = optax.chain(task.optimizer(), nowcast(wnn_plus(model_params=params, config=config), interval=20, ctx=5,
                                             horizon=schedules.constant_horizon(3)))
  p = task.init(jax.random.PRNGKey(9))
  s = tx.init(p)
  step = jax.jit(lambda p, s, i: tx.update(jax.grad(task.loss)(p, i), s, p))
  for t in range(120):
    u, s = step(p, s, jnp.asarray(task.batch_indices(9, t, 1)[0]))
    p = optax.apply_updates(p, u)
  nc = s[1]
  assert int(nc.n_jumps) == 1 and all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))
