"""The paired wall-time benchmark (``benchmarks/paired_time.py``): its measurement and its arithmetic."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import paired_time as pt
from benchmarks import run as bench
from optax_nowcast.tasks import make_task


def test_project_combines_measured_costs_with_the_suites_steps_and_jumps():
  costs = {"wnn+": {"adam_s_per_step": 0.01, "s_per_step": 0.011, "step_ratio": 1.1,
                    "period_overhead_s": 2.0}}
  summary = {"adam": {"per_seed": [{"seed": 0, "steps_to_target": 1000, "reduction_pct": 0.0},
                                   {"seed": 1, "steps_to_target": 900, "reduction_pct": 0.0}]},
             "wnn+": {"per_seed": [{"seed": 0, "steps_to_target": 600, "reduction_pct": 40.0},
                                   {"seed": 1, "steps_to_target": None, "reduction_pct": None}]}}
  runs = {"wnn+": [{"seed": 0, "jump_steps": [201, 401, 601, 801]}, {"seed": 1, "jump_steps": [201]}]}
  res = pt.project(costs, summary, runs)["wnn+"]
  s0, s1 = res["per_seed"]
  assert s0["jumps_to_target"] == 2  # jumps at 201 and 401 come before step 600; 601 does not
  assert s0["time_s"] == pytest.approx(600 * 0.011 + 2 * 2.0)
  assert s0["adam_time_s"] == pytest.approx(10.0)
  assert s0["time_reduction_pct"] == pytest.approx(100 * (1 - 10.6 / 10.0))  # fewer steps, yet slower
  assert s1["time_s"] is None and s1["time_reduction_pct"] is None
  assert res["median"]["time_reduction_pct"] is None  # one seed never reached Adam's value
  assert res["median"]["adam_time_s"] == pytest.approx(np.median([10.0, 9.0]))


def test_measure_times_one_jump_per_jump_chunk_on_digits():
  s = bench.Settings(steps=60, eval_every=10, smooth=2, interval=20, ctx=3, horizon=2)
  task = make_task("digits", None, steps=60)
  res = pt.measure(task, ["linefit", "wp1", "linefit+wp2"], s, steps=6, repeats=2)
  assert set(res) == {"linefit", "wp1", "linefit+wp2"}
  for r in res.values():
    assert r["adam_s_per_step"] > 0 and r["s_per_step"] > 0 and len(r["chunks_s"]) == 2
    assert r["step_ratio"] == pytest.approx(r["s_per_step"] / r["adam_s_per_step"])
  assert len(res["linefit"]["jump_chunks_s"]) == 2 and np.isfinite(res["linefit"]["period_overhead_s"])
  assert res["wp1"]["jump_chunks_s"] == [] and res["wp1"]["period_overhead_s"] == 0.0  # it never jumps
  assert len(res["linefit+wp2"]["jump_chunks_s"]) == 2  # weight prediction with jumps: jumps timed too
  with pytest.raises(ValueError, match="multiple of ctx"):
    pt.measure(task, ["linefit"], s, steps=7)


def test_chunk_steps_are_a_multiple_of_ctx_within_half_a_jump_period():
  s = bench.Settings(steps=60, eval_every=10, smooth=2, interval=20, ctx=3, horizon=2)
  task = make_task("digits", None, steps=60)
  assert pt.chunk_steps(task, s, seconds=1e-9, probe=5) == 6  # at least the probe, rounded up to ctx
  assert pt.chunk_steps(task, s, seconds=1e9, probe=5) == 30  # at most half of ctx * interval = 60
  mid = pt.chunk_steps(task, s, seconds=0.01, probe=5)
  assert mid % 3 == 0 and 6 <= mid <= 30


def test_reproject_puts_stored_costs_on_the_runs_as_they_are_now(tmp_path):
  """``--reproject``: measured costs projected again onto every finished seed (more seeds since the
  measurement), and a method without finished runs dropped."""
  out = str(tmp_path)
  s = bench.Settings(steps=60, eval_every=10, smooth=2, interval=4, ctx=3, horizon=2, val_size=None)
  bench.run_suite("test", ["digits"], ["adam", "linefit"], 3, s, out, quiet=True)
  found = bench._finished_runs("test", 3, s, [out])
  costs = {"adam_s_per_step": 0.01, "s_per_step": 0.012, "step_ratio": 1.2, "period_overhead_s": 0.05}
  stale = {"per_seed": [{"seed": 0}], "median": {"time_reduction_pct": 99.0}}  # measured on one seed
  result = {"suite": "test", "repeats": 5, "backend": "cpu", "cpu_count": 2,
            "tasks": {"digits": {"linefit": {**costs, **stale}, "wnn+": {**costs, **stale}}}}
  pt.reproject(result, found, s, "test", out, "paired_time_test")
  got = result["tasks"]["digits"]
  assert set(got) == {"linefit"}  # wnn+ has no runs
  assert [r["seed"] for r in got["linefit"]["per_seed"]] == [0, 1, 2]
  summary = bench.summarise_task(found["digits"], bench._spec_for("digits", s), s)
  assert got["linefit"] == pt.project({"linefit": costs}, summary, found["digits"])["linefit"]
  with open(os.path.join(out, "paired_time_test.json")) as f:
    assert json.load(f)["tasks"]["digits"]["linefit"]["per_seed"][2]["seed"] == 2
