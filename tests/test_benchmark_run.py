"""The steps-to-target benchmark (``benchmarks/run.py``): measures, files, resumption."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from benchmarks import run as bench


def test_steps_to_target_uses_the_moving_average():
  steps = np.arange(1, 8) * 10
  curve = [0.1, 0.9, 0.1, 0.5, 0.6, 0.7, 0.8]  # one lucky evaluation at step 20
  assert bench.steps_to_target(curve, steps, 0.6, window=1, higher_is_better=True) == 20
  assert bench.steps_to_target(curve, steps, 0.6, window=3, higher_is_better=True) == 60  # (.5+.6+.7)/3
  assert bench.steps_to_target(curve, steps, 0.95, window=3, higher_is_better=True) is None
  ppl = [60.0, 20.0, 12.0, 11.0, 10.0]
  assert bench.steps_to_target(ppl, steps[:5], 11.0, window=2, higher_is_better=False) == 50


SMALL = bench.Settings(steps=60, eval_every=10, smooth=2, interval=4, ctx=3, horizon=2, val_size=None)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench"))
  res = bench.run_suite("test", ["digits"], ["adam", "linefit", "linefit+"], 2, SMALL, out, quiet=True)
  return out, res


def test_suite_writes_results(suite):
  out, res = suite
  assert res["computed"] == 6 and res["reused"] == 0
  for f in ("test.json", "test.md", "test_digits.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0
  with open(os.path.join(out, "runs", "test", "digits", "linefit", "seed1.json")) as f:
    r = json.load(f)
  assert r["eval_steps"] == list(range(10, 61, 10)) and len(r["val_metric"]) == 6
  assert r["n_jumps"] == 4 and r["jump_steps"] == [13, 25, 37, 49]  # a jump every interval*ctx = 12 steps
  assert all(np.diff(r["train_time_s"]) > 0) and r["finite"]
  adam = res["summary"]["digits"]["methods"]["adam"]
  assert all(row["reduction_pct"] == 0.0 for row in adam["per_seed"])
  assert adam["median"]["n_seeds"] == 2 and "| digits | linefit+ | 2 |" in res["table"]
  with open(os.path.join(out, "test_matrix.md")) as f:
    matrix = f.read()
  assert "| task | linefit | linefit+ |" in matrix  # the methods run, in METHODS order, no Adam


def test_matrix_marks_seeds_that_never_reach_the_target():
  def res(reductions):
    rows = [{"reduction_pct": r} for r in reductions]
    reached = sum(r is not None for r in reductions)
    med = float(np.median([r for r in reductions if r is not None])) if reached == len(rows) else None
    return {"per_seed": rows, "median": {"reduction_pct": med, "reached_target": reached,
                                         "n_seeds": len(rows)}}
  summary = {"FM-32": {"methods": {"adam": res([0.0, 0.0, 0.0]), "linefit": res([10.0, 30.0, 20.0]),
                                   "wnn+": res([40.0, None, 30.0])}},
             "digits": {"methods": {"adam": res([0.0] * 3), "linefit": res([-5.0, 5.0, 1.0])}}}
  lines = bench.format_matrix("s", summary).splitlines()
  assert lines[2] == "| task | linefit | wnn+ |"
  assert lines[4] == "| FM-32* | 20.0 | (2/3) 35.0 |"  # held out; median of the seeds that reached it
  assert lines[5] == "| digits | 1.0 |  |"  # wnn+ not run on digits


def test_same_minibatches_for_every_method_of_a_seed(suite):
  out, _ = suite
  runs = {}
  for m in ("adam", "linefit"):
    with open(os.path.join(out, "runs", "test", "digits", m, "seed0.json")) as f:
      runs[m] = json.load(f)
  # Before the first jump (step 13) the two runs are the same computation on the same batches.
  assert runs["adam"]["val_metric"][0] == runs["linefit"]["val_metric"][0]
  assert runs["adam"]["train_loss"][0] == runs["linefit"]["train_loss"][0]


def test_resumes_without_recomputing(suite):
  out, res = suite
  again = bench.run_suite("test", ["digits"], ["adam", "linefit", "linefit+"], 2, SMALL, out, quiet=True)
  assert again["computed"] == 0 and again["reused"] == 6
  assert again["table"] == res["table"]
  changed = bench.Settings(**{**SMALL.__dict__, "horizon": 3})  # new settings: only nowcast runs redo
  third = bench.run_suite("test", ["digits"], ["adam", "linefit"], 1, changed, out, quiet=True)
  assert third["computed"] == 2


def test_only_seeds_computes_just_those(tmp_path):
  out = str(tmp_path)
  res = bench.run_suite("test", ["digits"], ["adam", "linefit"], 2, SMALL, out, quiet=True, only_seeds=[1])
  assert res["computed"] == 2
  assert sorted(os.listdir(os.path.join(out, "runs", "test", "digits", "adam"))) == ["seed1.json"]
  rest = bench.run_suite("test", ["digits"], ["adam", "linefit"], 2, SMALL, out, quiet=True, only_seeds=[0])
  assert rest["computed"] == 2 and rest["reused"] == 2
  with pytest.raises(ValueError, match="only_seeds"):
    bench.run_suite("test", ["digits"], ["adam"], 2, SMALL, out, only_seeds=[2])


def test_task_seeds_give_a_configuration_more_seeds(tmp_path):
  """``task_seeds``: a configuration (and its length sweeps) runs and reports its own number of seeds, and
  a method with fewer (at least the suite's, seeds 0..k-1) over the seeds it has."""
  out = str(tmp_path)
  more = {"digits": 3}
  assert bench.seeds_for("digits@40", 2, more) == 3 and bench.seeds_for("FM-16", 2, more) == 2
  res = bench.run_suite("test", ["digits"], ["adam"], 2, SMALL, out, quiet=True, task_seeds=more,
                        only_seeds=[2])
  assert res["computed"] == 1 and res["summary"] == {}  # seeds 0 and 1 still missing
  res = bench.run_suite("test", ["digits"], ["adam"], 2, SMALL, out, quiet=True, task_seeds=more)
  assert res["computed"] == 2
  assert [r["seed"] for r in res["summary"]["digits"]["methods"]["adam"]["per_seed"]] == [0, 1, 2]
  fewer = bench._finished_runs("test", 2, SMALL, [out], {"digits": 4})  # a fourth seed asked for, not run
  assert [r["seed"] for r in fewer["digits"]["adam"]] == [0, 1, 2]
  assert bench._finished_runs("test", 4, SMALL, [out]) == {}  # the suite's own count is not met
  assert bench.TASK_SEEDS["general"]["G-FM-MLP3-adamw-cos"] == 5


def test_weight_prediction_table_pairs_each_seed_with_adam(tmp_path):
  out = str(tmp_path)
  res = bench.run_suite("test", ["digits"], ["adam", "wp2"], 2, SMALL, out, quiet=True)
  (row,) = res["weight_prediction"]
  runs = {}
  for m in ("adam", "wp2"):
    runs[m] = []
    for k in (0, 1):
      with open(os.path.join(out, "runs", "test", "digits", m, f"seed{k}.json")) as f:
        runs[m].append(json.load(f))
  deltas = [w["final_full_val_metric"] - a["final_full_val_metric"]
            for w, a in zip(runs["wp2"], runs["adam"], strict=True)]
  assert row["method"] == "wp2" and row["steps"] == 2 and row["n_seeds"] == 2
  np.testing.assert_allclose(row["delta_metric_per_seed"], deltas)
  np.testing.assert_allclose(row["delta_metric_mean"], np.mean(deltas))
  assert row["better_seeds"] == sum(d > 0 for d in deltas)  # accuracy: higher is better
  assert runs["wp2"][0]["train_loss"][0] != runs["adam"][0]["train_loss"][0]  # gradients at other weights
  with open(os.path.join(out, "test_weight_prediction.md")) as f:
    assert "| digits | wp2 | 2 |" in f.read()


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="Unknown method 'bogus'"):
    bench.run_suite("t", ["digits"], ["adam", "bogus"], 1, SMALL, str(tmp_path))
  with pytest.raises(ValueError, match="must include 'adam'"):
    bench.run_suite("t", ["digits"], ["linefit"], 1, SMALL, str(tmp_path))
  with pytest.raises(ValueError, match="Unknown task"):
    bench.run_suite("t", ["FM"], ["adam"], 1, SMALL, str(tmp_path))


@pytest.mark.slow
def test_quick_cli_on_real_data(tmp_path, data_dir):
  """The CI smoke run of the real tasks: FM-16 and LM-3-24, Adam vs linefit, shortened further."""
  res = bench.main(["--quick", "--methods", "adam,linefit", "--out", str(tmp_path), "--quiet",
                    "--data-dir", data_dir])
  assert res["computed"] == 4
  fm = res["summary"]["FM-16"]["methods"]
  assert fm["adam"]["median"]["final_val_metric"] > 0.6  # 300 steps of Adam on Fashion-MNIST
  assert fm["linefit"]["per_seed"][0]["n_jumps"] == 2
  lm = res["summary"]["LM-3-24"]["methods"]
  assert lm["adam"]["median"]["final_val_metric"] < 20  # perplexity, from ~65 at init


def test_a_changed_method_definition_recomputes_its_runs(monkeypatch):
  """Bumping ``METHOD_VERSION`` (the method's definition changed) changes its runs' fingerprint only."""
  spec = bench._spec_for("digits", SMALL)
  before = {m: bench._fingerprint(spec, m, 0, SMALL) for m in ("nino-ours+rb", "nino-ours")}
  monkeypatch.setitem(bench.METHOD_VERSION, "nino-ours+rb", bench.METHOD_VERSION["nino-ours+rb"] + 1)
  assert bench._fingerprint(spec, "nino-ours+rb", 0, SMALL) != before["nino-ours+rb"]
  assert bench._fingerprint(spec, "nino-ours", 0, SMALL) == before["nino-ours"]


@pytest.mark.slow
def test_every_shipped_method_runs_end_to_end(tmp_path):
  """Each method that needs no file from outside the package completes a short run and records its jumps:
  a method's code path is exercised here before an hour-long benchmark finds it broken."""
  outside = {"nino", "wnn+official"}  # the official checkpoints
  methods = [m for m in bench.METHODS if m not in outside]
  s = dataclasses.replace(SMALL, steps=120, interval=12, ctx=5)  # interval > rollback window + 1
  res = bench.run_suite("t", ["digits"], methods, 1, s, str(tmp_path), quiet=True)
  assert res["computed"] == len(methods)
  runs = {m: res["summary"]["digits"]["methods"][m]["per_seed"][0] for m in methods}
  for m, r in runs.items():
    assert r["finite"], m
    jumps = r["n_jumps"] + r["n_rejected"]
    assert (jumps == 0) if m in ("adam", "wp1", "wp2", "wp3") else (jumps >= 1), (m, r["n_jumps"])
  assert runs["lfd2"]["n_rollbacks"] == 0  # farcast has no rollback; its state has no such counter
