"""research.jump_loss_ratio: the per-jump loss ratios and their table."""

from __future__ import annotations

import math

from benchmarks import run as bench
from research import jump_loss_ratio as jlr


def test_ratios_read_every_jump_of_a_run():
  """On digits (embedded data) every scheduled jump of linefit+ is read at its own step, before and after the
  jump on that step's minibatch, and the run's final metric is the full validation accuracy."""
  entry = "G-digits-MLP2-adabelief"
  s = bench.settings_for("general", entry, bench.GENERAL)
  r = jlr.ratios(entry, "linefit+", 0, None)
  period, steps = s.ctx * s.interval, bench.ALL_TASKS[entry].steps
  assert [j["step"] for j in r["jumps"]] == list(range(period, steps, period))
  assert all(math.isfinite(j["before"]) and math.isfinite(j["after"]) for j in r["jumps"])
  assert any(j["after"] != j["before"] for j in r["jumps"])  # the jump moved the parameters
  assert 0.0 < r["final"] <= 1.0 and r["higher_is_better"]


def test_table_flags_runs_worse_than_the_base():
  row = {"entry": "e", "method": "m", "seed": 0, "jumps": [{"step": 5, "before": 2.0, "after": 5.0}],
         "final": 0.80, "base_final": 0.85, "higher_is_better": True}
  lm = dict(row, final=8.05, base_final=8.0, higher_is_better=False)  # perplexity: 0.05 worse is level
  lines = jlr.format_md([row, lm]).splitlines()
  assert lines[-2] == "| e | m | 0 | 2.50 | 0.8000 | 0.8500 | worse |"
  assert lines[-1].endswith("| 8.0500 | 8.0000 |  |")


def test_a_per_run_method_is_read_at_its_own_period():
  """A ``/run`` method jumps every ``ctx`` of its own intervals (the run's steps / 50), not the suite's: at
  55 % of digits' schedule, 1,100 steps, every 22 steps instead of the suite's 40."""
  entry = "G-digits-MLP2-adabelief@55"
  s = bench.settings_for("general", entry, bench.GENERAL)
  task = bench.make_suite_task(entry, None, s)
  ms = bench.method_settings(task, "linefit+/rate/run", s)
  assert ms.interval != s.interval
  r = jlr.ratios(entry, "linefit+/rate/run", 0, None)
  period = ms.ctx * ms.interval
  assert [j["step"] for j in r["jumps"]] == list(range(period, task.spec.steps, period))
