"""research.jump_norms: the norms it reports are those of the base's and the method's own runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import run as bench
from research import jump_norms as jn
from research import jump_scale as js


def test_jump_norms_reads_the_base_and_the_jump_at_the_first_jump():
  """On digits (embedded data), tiny settings: the base's and the jump's norms are those of the two runs
  trained separately to the jump step, the base's later norms those of its own longer run, and a leaf is
  overshot exactly when the jump's norm exceeds every norm of the base."""
  entry = "G-digits-MLP2-adabelief"
  s = dataclasses.replace(bench.settings_for("general", entry, bench.GENERAL), steps=200, eval_every=10,
                          interval=8)
  task = bench.make_suite_task(entry, None, s)
  r = jn.jump_norms(task, "linefit+", s, 0)
  jump = s.ctx * s.interval + 1
  assert r["jump_step"] == jump and r["later_steps"] == [2 * jump, 4 * jump, 200]
  (pb, _), _ = js._train(task, "adam", s, 0, 0, jump)
  (pj, _), _ = js._train(task, "linefit+", s, 0, 0, jump)
  (pe, _), _ = js._train(task, "adam", s, 0, 0, 200)
  fb, fj, fe = jn._flat(pb), jn._flat(pj), jn._flat(pe)
  assert [leaf["leaf"] for leaf in r["leaves"]] == list(fb)
  for leaf in r["leaves"]:
    k = leaf["leaf"]
    assert leaf["base"] == pytest.approx(np.linalg.norm(fb[k]), rel=1e-6)
    assert leaf["jump"] == pytest.approx(np.linalg.norm(fj[k]), rel=1e-6)
    assert leaf["base_later"]["200"] == pytest.approx(np.linalg.norm(fe[k]), rel=1e-5)
    assert leaf["overshot"] == (leaf["jump"] > max(leaf["base"], *leaf["base_later"].values()))
  assert any(leaf["relative_jump"] > 0 for leaf in r["leaves"])  # linefit+ jumped
  assert "| params/Dense_0/kernel |" in jn.format_table([r])
