"""research.jump_direction: the jump against the base's own displacement after it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import run as bench
from research import jump_direction as jd
from research import jump_scale as js


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
  c, _ = js._train(task, "adam", s, 0, 0, jump + 1 + 10)  # the base alone, 10 steps past the jump step
  c0, _ = js._train(task, "adam", s, 0, 0, jump + 1)
  c1, _ = js._train(task, "linefit+", s, 0, 0, jump + 1)
  d = np.asarray(jd._flat(c1[0])) - np.asarray(jd._flat(c0[0]))
  big_d = np.asarray(jd._flat(c[0])) - np.asarray(jd._flat(c0[0]))
  row = r["rows"][1]  # h = 10
  assert row["cos"] == pytest.approx(float(d @ big_d / np.linalg.norm(d) / np.linalg.norm(big_d)), abs=1e-5)
  assert row["ratio"] == pytest.approx(float(np.linalg.norm(big_d) / np.linalg.norm(d)), rel=1e-5)
  assert all(-1 - 1e-6 <= x["cos"] <= 1 + 1e-6 for x in r["rows"])
  reached = [x["h"] for x in r["rows"] if x["ratio"] >= 1]
  assert r["realized_horizon"] == (reached[0] if reached else None)
  assert "| G-digits-MLP2-adabelief | linefit+ | 0 |" in jd.format_table([r])


def test_more_minibatch_orders_average_the_base_displacement():
  """``orders=2``: ``D(h)`` is the mean of the run's own continuation and one with another minibatch order."""
  entry = "G-digits-MLP2-adabelief"
  s = dataclasses.replace(bench.settings_for("general", entry, bench.GENERAL), steps=200, eval_every=5,
                          interval=8)
  task = bench.make_suite_task(entry, None, s)
  one, two = (jd.direction(task, "linefit+", s, 0, periods=1, orders=k) for k in (1, 2))
  assert one["jump_norm"] == two["jump_norm"] and two["orders"] == 2
  start = s.ctx * s.interval + 1

  def base_at_jump():  # a fresh carry each time: the chunk donates its input
    return js._train(task, "adam", s, 0, 0, start)[0]

  theta = np.asarray(jd._flat(base_at_jump()[0]))
  own = np.asarray(jd._flat(js._train(task, "adam", s, 0, start, 5, carry=base_at_jump())[0][0]))
  other = np.asarray(jd._flat(js._train(task, "adam", s, 0, start, 5, carry=base_at_jump(),
                                        order=1000 + 1)[0][0]))
  assert not np.allclose(own, other)  # another minibatch order
  d = np.asarray(jd._flat(js._train(task, "linefit+", s, 0, 0, start)[0][0])) - theta
  big_d = (own + other) / 2 - theta
  expected = float(d @ big_d / np.linalg.norm(d) / np.linalg.norm(big_d))
  assert two["rows"][0]["cos"] == pytest.approx(expected, abs=1e-5)
  assert one["rows"][0]["cos"] != pytest.approx(expected, abs=1e-6)
