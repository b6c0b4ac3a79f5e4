"""research.jump_direction: the jump against the base's own displacement after it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import run as bench
from research import jump_direction as jd


def test_displacements_are_the_base_runs_own_and_the_cosines_are_consistent():
  """On digits (embedded data), tiny settings: the base's displacement read ``h`` steps after linefit+'s
  first jump is the base run's own, cosines lie in [-1, 1], and the realized horizon is the first ``h``
  where the base has gone as far as the jump."""
  entry = "G-digits-MLP2-adabelief"
  s = dataclasses.replace(bench.settings_for("general", entry, bench.GENERAL), steps=200, eval_every=5,
                          interval=8)
  task = bench.make_suite_task(entry, None, s)
  r = jd.direction(task, "linefit+", s, 0, periods=2)
  jump = s.ctx * s.interval
  assert r["jump_step"] == jump + 1 and r["jump_norm"] > 0
  assert [row["h"] for row in r["rows"]] == list(range(5, 2 * jump + 1, 5))
  c, _ = jd._run_to(task, "adam", s, 0, jump + 1 + 10)  # the base alone, 10 steps past the jump step
  c0, _ = jd._run_to(task, "adam", s, 0, jump + 1)
  c1, _ = jd._run_to(task, "linefit+", s, 0, jump + 1)
  d = np.asarray(jd._flat(c1[0])) - np.asarray(jd._flat(c0[0]))
  big_d = np.asarray(jd._flat(c[0])) - np.asarray(jd._flat(c0[0]))
  row = r["rows"][1]  # h = 10
  assert row["cos"] == pytest.approx(float(d @ big_d / np.linalg.norm(d) / np.linalg.norm(big_d)), abs=1e-5)
  assert row["ratio"] == pytest.approx(float(np.linalg.norm(big_d) / np.linalg.norm(d)), rel=1e-5)
  assert all(-1 - 1e-6 <= x["cos"] <= 1 + 1e-6 for x in r["rows"])
  reached = [x["h"] for x in r["rows"] if x["ratio"] >= 1]
  assert r["realized_horizon"] == (reached[0] if reached else None)
  assert "| G-digits-MLP2-adabelief | linefit+ | 0 |" in jd.format_table([r])
