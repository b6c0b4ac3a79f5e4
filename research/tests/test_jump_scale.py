"""research.jump_scale: the scaled jump's endpoints are the base's run and the method's own."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import run as bench
from research import jump_scale as js


def test_scale_zero_is_the_base_and_one_is_the_methods_jump():
  """On digits (embedded data), tiny settings: a = 0 continues exactly as the base optimizer's own run, a = 1
  exactly as the method's run up to its next jump, and a group row is reported per module."""
  entry = "G-digits-MLP2-adabelief"
  s = dataclasses.replace(bench.settings_for("general", entry, bench.GENERAL), steps=120, eval_every=10,
                          interval=8)
  task = bench.make_suite_task(entry, None, s)
  r = js.scale_jump(task, "linefit+", s, 0, scales=(0.0, 1.0), groups=True)
  a0, a1 = r["rows"][0], r["rows"][1]
  jump, rest = s.ctx * s.interval, s.ctx * s.interval - s.eval_every  # the method's run has no jump in rest
  (_, _), base_tail = js._train(task, "adam", s, 0, jump + 1, rest,
                                carry=js._train(task, "adam", s, 0, 0, jump + 1)[0])
  assert a0["train_loss_last"] == pytest.approx(base_tail[-1], rel=1e-6)
  (_, _), method_tail = js._train(task, "linefit+", s, 0, jump + 1, rest,
                                  carry=js._train(task, "linefit+", s, 0, 0, jump + 1)[0])
  assert a1["train_loss_last"] == pytest.approx(method_tail[-1], rel=1e-6)
  assert a0["val_loss"] != a1["val_loss"]  # the jump moved the parameters
  assert [row["what"] for row in r["rows"][2:]] == ["only params/Dense_0", "only params/Dense_1",
                                                    "only params/Dense_2"]
  assert "| a = 1 |" in js.format_table([r])


def test_a_per_run_method_is_scaled_at_its_own_first_jump():
  """``/run`` methods record every steps / 50 (``schedules.for_run``): the first jump, and the window after
  it, follow that period, not the suite's interval; scales above 1 are taken as given."""
  entry = "G-digits-MLP2-adabelief"
  s = dataclasses.replace(bench.settings_for("general", entry, bench.GENERAL), steps=200, eval_every=5,
                          interval=8)
  task = bench.make_suite_task(entry, None, s)
  ms = bench.method_settings(task, "linefit+/rate/run", s)
  assert ms.interval != s.interval
  r = js.scale_jump(task, "linefit+/rate/run", s, 0, scales=(0.0, 1.0, 2.0))
  assert r["jump_step"] == ms.ctx * ms.interval + 1 and r["continued_steps"] == ms.ctx * ms.interval - 5
  assert [row["scale"] for row in r["rows"]] == [0.0, 1.0, 2.0]
  assert len({row["val_loss"] for row in r["rows"]}) == 3
