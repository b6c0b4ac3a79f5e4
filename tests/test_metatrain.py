"""Trajectory collection: vmapped runs equal plain training, the on-disk format, resumption."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_nowcast.metatrain import collect, estimate_bytes, load_run, plan_runs, unflatten
from optax_nowcast.predictors import wnn
from optax_nowcast.tasks import make_task


@pytest.mark.slow
def _train_alone(task, tx, seed: int, steps: int):
  """One run of ``task`` with ``tx``, step by step on the minibatches ``collect`` gives that seed."""
  params = task.init(jax.random.PRNGKey(seed))
  opt_state = tx.init(params)
  for s in range(steps):
    g = jax.grad(task.loss)(params, jnp.asarray(task.batch_indices(seed, s, 1)[0]))
    u, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, u)
  return params


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
  first = task.init(jax.random.PRNGKey(1))
  np.testing.assert_allclose(states[0], np.concatenate([np.ravel(x) for x in jax.tree.leaves(first)]))
  params = _train_alone(task, optax.adam(task.spec.learning_rate * 2.0), seed=1, steps=100)
  back = unflatten(states[-1], meta, params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    # Batched and plain matmuls round differently and Adam amplifies it on a few coordinates.
    assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-3 * np.linalg.norm(np.asarray(b))
  again = collect("digits", runs, steps=100, interval=20, out_dir=str(tmp_path), quiet=True)
  assert again["computed"] == [] and len(again["skipped"]) == 4


def test_collect_trains_each_runs_own_optimizer_and_schedule(tmp_path):
  """A TaskSpec with Nesterov SGD and a warmup-cosine schedule: every vmapped run follows the task's
  optimizer at its own peak rate (lr_scale times the spec's), its schedule counted per run."""
  import dataclasses

  from optax_nowcast.tasks import TASKS

  spec = dataclasses.replace(TASKS["digits"], name="R-digits-nesterov-cos", learning_rate=0.02,
                             optimizer="nesterov", schedule="warmup_cosine", features=(16,))
  runs = plan_runs([3], lr_scales=[0.5, 2.0])
  collect(spec, runs, steps=60, interval=20, out_dir=str(tmp_path), vmap=2, dtype=np.float32, quiet=True)
  for run in runs:
    states, meta = load_run(str(tmp_path / spec.name / run.run_id))
    assert meta["spec"]["optimizer"] == "nesterov" and meta["spec"]["schedule"] == "warmup_cosine"
    assert meta["learning_rate"] == pytest.approx(0.02 * run.lr_scale)
    task = make_task(dataclasses.replace(spec, steps=60, learning_rate=0.02 * run.lr_scale))
    params = _train_alone(task, task.optimizer(), seed=3, steps=60)
    back = unflatten(states[-1], meta, params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
      assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-4 * np.linalg.norm(np.asarray(b))


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
  """Five real digits runs of 400 steps, a state every 20 (21 states each)."""
  root = tmp_path_factory.mktemp("traj")
  collect("digits", plan_runs(range(5)), steps=400, interval=20, out_dir=str(root), vmap=5, quiet=True)
  return root


def _train_with(tx, steps=120, seed=9):
  task = make_task("digits")
  p = task.init(jax.random.PRNGKey(seed))
  s = tx.init(p)
  step = jax.jit(lambda p, s, i: tx.update(jax.grad(task.loss)(p, i), s, p))
  for t in range(steps):
    u, s = step(p, s, jnp.asarray(task.batch_indices(seed, t, 1)[0]))
    p = optax.apply_updates(p, u)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))
  return p, s


def test_collect_train_load_nowcast_on_digits(digits_runs, tmp_path):
  """The whole pipeline, small: collect digits runs, train WNN+, save, load, nowcast with it."""
  from optax_nowcast import nowcast, schedules
  from optax_nowcast.metatrain import TrainConfig, find_runs, load_predictor_params, train_wnn_plus
  from optax_nowcast.predictors import wnn_plus

  runs = find_runs(str(digits_runs))
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
  _, s = _train_with(tx)
  assert int(s[1].n_jumps) == 1
  # The file itself is accepted too, and weights of another predictor are refused by name.
  wnn_plus(str(tmp_path / "weights" / "wnn_plus.msgpack"))
  with pytest.raises(ValueError, match="holds 'wnn_plus' weights, not 'wnn'"):
    wnn(str(tmp_path / "weights" / "wnn_plus.msgpack"))


@pytest.mark.slow
def test_cli_trains_wnn_and_nowcast_uses_it(digits_runs, tmp_path):
  from optax_nowcast import nowcast
  from optax_nowcast.metatrain.__main__ import main

  out = tmp_path / "weights"
  res = main(["train", "--predictor", "wnn", "--runs", str(digits_runs), "--steps", "150",
              "--elements", "512", "--out", str(out)])
  assert res["val_loss"] < res["initial_val_loss"], (res["initial_val_loss"], res["val_loss"])
  assert set(res["history"][-1]["val_loss_by_kind"]) == {"conv", "dense", "bias"}
  assert res["history"][-1]["val_loss_by_kind"]["conv"] is None  # digits has no conv kernels
  task = make_task("digits")
  tx = optax.chain(task.optimizer(), nowcast(wnn(str(out / "wnn.msgpack")), interval=20, ctx=5, horizon=5))
  _, s = _train_with(tx)
  assert int(s[1].n_jumps) == 1


def test_lfd2_trained_on_runs_beats_repeating_and_farcasts(digits_runs, tmp_path):
  from optax_nowcast import farcast
  from optax_nowcast.metatrain import TrainConfig, find_runs, train_lfd_on_runs
  from optax_nowcast.predictors import lfd2

  res = train_lfd_on_runs(find_runs(str(digits_runs)), TrainConfig(steps=600), n=5, m=10, coords=128,
                          out_dir=str(tmp_path / "w"), log=lambda *_: None)
  # initial_val_loss is the MAE of repeating w_n: the fitted map must beat it on held-out runs.
  assert res["val_loss"] < 0.9 * res["initial_val_loss"], (res["initial_val_loss"], res["val_loss"])
  task = make_task("digits")
  tx = optax.chain(task.optimizer(), farcast(lfd2(str(tmp_path / "w" / "lfd2.msgpack")), n=5, unit=20,
                                             horizon=10))
  _, s = _train_with(tx, steps=130)
  assert int(s[1].n_jumps) == 1 and int(s[1].last_jump_step) == 100


@pytest.mark.slow
def test_nino_meta_training_lowers_the_loss_and_the_weights_nowcast(digits_runs, tmp_path):
  from optax_nowcast import nowcast
  from optax_nowcast.metatrain import NiNoTrainConfig, find_runs, train_nino
  from optax_nowcast.metatrain.train_nino import GraphRun, graph_window
  from optax_nowcast.predictors import nino

  runs = find_runs(str(digits_runs))
  cfg = NiNoTrainConfig(hidden=16, layers=2, horizons=4, steps=40, windows_per_batch=2, learning_rate=1e-2)
  # A window on the neural graph: every parameter element is one (edge, slot) target, nothing else is.
  r = GraphRun(runs[0], cfg)
  x, y, m, hm = graph_window(r, 3, cfg, slots=9)
  assert x.shape == (r.graph.num_edges, 45) and y.shape == (r.graph.num_edges, 9, 4)
  assert int(m.sum()) == r.states.shape[1] and hm.tolist() == [1, 1, 1, 1]
  res = train_nino(runs, cfg, out_dir=str(tmp_path / "w"), log=lambda *_: None)
  assert res["train_runs"] == 4 and res["val_runs"] == 1
  assert res["val_loss"] < res["initial_val_loss"], (res["initial_val_loss"], res["val_loss"])
  task = make_task("digits")
  tx = optax.chain(task.optimizer(), nowcast(nino(str(tmp_path / "w" / "nino.msgpack")), interval=20, ctx=5,
                                             horizon=2))
  _, s = _train_with(tx)
  assert int(s[1].n_jumps) == 1


def test_nino_fine_tuning_starts_from_the_given_weights(digits_runs, tmp_path):
  """``init``: training starts at the file's weights (its validation loss), and another model is refused."""
  import dataclasses

  from optax_nowcast.metatrain import NiNoTrainConfig, find_runs, train_nino

  runs = find_runs(str(digits_runs))[:3]
  cfg = NiNoTrainConfig(hidden=8, layers=1, horizons=3, steps=6, windows_per_batch=1, learning_rate=1e-2)
  first = train_nino(runs, cfg, out_dir=str(tmp_path / "a"), log=lambda *_: None)
  weights = str(tmp_path / "a" / "nino.msgpack")
  tuned = train_nino(runs, dataclasses.replace(cfg, init=weights), out_dir=str(tmp_path / "b"),
                     log=lambda *_: None)
  np.testing.assert_allclose(tuned["initial_val_loss"], first["val_loss"], rtol=1e-6)
  fresh = train_nino(runs, cfg, log=lambda *_: None)
  assert fresh["initial_val_loss"] != pytest.approx(first["val_loss"], rel=1e-6)
  assert tuned["train_config"]["init"] == weights and "init_sha256" not in first
  with open(str(tmp_path / "a" / "nino.json")) as f:
    assert tuned["init_sha256"] == json.load(f)["sha256"]  # the start weights, wherever they lay
  with pytest.raises(ValueError, match="init=.*hidden: 8 in the file, 16 here"):
    train_nino(runs, dataclasses.replace(cfg, hidden=16, init=weights), log=lambda *_: None)
  with pytest.raises(FileNotFoundError, match="init="):
    train_nino(runs, dataclasses.replace(cfg, init=str(tmp_path / "none.msgpack")), log=lambda *_: None)


def test_nino_training_resumes_from_its_checkpoint_to_the_same_weights(digits_runs, tmp_path):
  """A job stopped by its time budget and run again ends with the weights of an uninterrupted run."""
  from optax_nowcast.metatrain import NiNoTrainConfig, find_runs, train_nino

  runs = find_runs(str(digits_runs))[:3]
  cfg = NiNoTrainConfig(hidden=8, layers=1, horizons=3, steps=6, windows_per_batch=1, checkpoint_every=2)
  whole = train_nino(runs, cfg, out_dir=str(tmp_path / "a"), log=lambda *_: None)
  assert whole["finished"] and whole["step"] == 6
  part = train_nino(runs, cfg, out_dir=str(tmp_path / "b"), log=lambda *_: None, time_budget_s=0.0)
  assert not part["finished"] and part["step"] == 1
  assert (tmp_path / "b" / "nino.ckpt.msgpack").exists() and not (tmp_path / "b" / "nino.msgpack").exists()
  lines = []
  resumed = train_nino(runs, cfg, out_dir=str(tmp_path / "b"), log=lines.append)
  assert lines[0].startswith("resuming from step 1/6") and resumed["finished"]
  for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(resumed["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed["history"] == whole["history"]
  with pytest.raises(ValueError, match="checkpoint of another config"):
    train_nino(runs, NiNoTrainConfig(hidden=8, layers=1, horizons=3, steps=7, windows_per_batch=1),
               out_dir=str(tmp_path / "b"), log=lambda *_: None)


def test_nino_plus_plus_options_train_and_reload(digits_runs, tmp_path):
  """A GRU head (trained on 50 sampled edges a window) on 4 eigenvectors + centrality (NiNo++'s 5
  features): the saved config rebuilds the same model, which then jumps."""
  from optax_nowcast import nowcast
  from optax_nowcast.metatrain import NiNoTrainConfig, find_runs, train_nino
  from optax_nowcast.metatrain.train_nino import GraphRun
  from optax_nowcast.predictors import nino

  with pytest.raises(ValueError, match="head must be"):
    NiNoTrainConfig(head="transformer")
  runs = find_runs(str(digits_runs))[:3]
  with pytest.raises(ValueError, match="head_edges must be >= 0"):
    NiNoTrainConfig(head_edges=-1)
  cfg = NiNoTrainConfig(hidden=8, layers=1, horizons=3, steps=3, windows_per_batch=1, head="gru",
                        node_features="lpe+centrality", lpe=5, rnn_hidden=4, head_edges=50)
  feat = GraphRun(runs[0], cfg).feat
  assert feat.shape[1] == 5 and np.all(feat[:, -1] >= 0)  # the last column is the (non-negative) centrality
  res = train_nino(runs, cfg, out_dir=str(tmp_path), log=lambda *_: None)
  assert res["config"]["head"] == "gru" and res["config"]["node_features"] == "lpe+centrality"
  assert res["config"]["rnn_hidden"] == 4
  assert res["config"]["lpe"] == 5 and res["n_params"] > 0 and res["data"][0]["task"] == "digits"
  path = str(tmp_path / "nino.msgpack")
  with pytest.raises(ValueError, match="trained with 'lpe\\+centrality'"):
    nino(path, node_features="lpe")
  task = make_task("digits")
  tx = optax.chain(task.optimizer(), nowcast(nino(path), interval=20, ctx=5, horizon=2))
  _, s = _train_with(tx)
  assert int(s[1].n_jumps) == 1


def test_collection_split_over_processes_survives_one_dying(tmp_path):
  """``metatrain collect --shard i/2`` in two processes: each writes its own runs; one is killed after its
  first run and rerun (its finished run is skipped); the index lists every run once both are done."""
  import signal
  import subprocess
  import sys
  import time

  out = str(tmp_path / "runs")
  cmd = [sys.executable, "-m", "optax_nowcast.metatrain", "collect", "--task", "digits", "--seeds", "0:6",
         "--steps", "600", "--interval", "100", "--vmap", "1", "--quiet", "--out", out]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  ok = subprocess.run([*cmd, "--shard", "0/2"], env=env, capture_output=True, text=True, timeout=600)
  assert ok.returncode == 0, ok.stderr[-2000:]
  victim = subprocess.Popen([*cmd, "--shard", "1/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  mine = [r.run_id for r in plan_runs(range(6))][1::2]
  first = os.path.join(out, "digits", mine[0], "index.json")
  deadline = time.time() + 300
  while not os.path.exists(first) and time.time() < deadline and victim.poll() is None:
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  with open(os.path.join(out, "digits", "collection.json")) as f:
    index = json.load(f)  # written by shard 0: its own 3 runs, shard 1's missing
  assert len(index["planned"]) == 6 and set(mine) <= set(index["missing"])
  again = subprocess.run([*cmd, "--shard", "1/2"], env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  skipped = int(again.stdout.split("skipped ")[1].split()[0])
  assert 1 <= skipped < 3, again.stdout  # the run finished before the kill is not recomputed
  with open(os.path.join(out, "digits", "collection.json")) as f:
    index = json.load(f)
  assert index["missing"] == [] and sorted(index["complete"]) == sorted(index["planned"])
  for run_id in index["planned"]:
    states, meta = load_run(os.path.join(out, "digits", run_id))
    assert meta["complete"] and states.shape[0] == 7
