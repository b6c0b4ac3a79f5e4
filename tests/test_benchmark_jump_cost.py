"""benchmarks/jump_cost.py: a jump's time against 100 training steps, measured side by side."""

from __future__ import annotations

import json
import os

from benchmarks import jump_cost


def test_quick_measures_every_predictor(tmp_path):
  rows = jump_cost.main(["--quick", "--out", str(tmp_path)])
  assert [r["predictor"] for r in rows] == list(jump_cost.PREDICTORS)
  for r in rows:
    assert r["jump_s"] > 0 and r["steps100_s"] > 0
    assert abs(r["ratio"] - r["jump_s"] / r["steps100_s"]) < 1e-12
    assert (r["graph_edges"] is None) == (not r["predictor"].startswith("nino"))
    assert (r["network_s"] is None) == (r["graph_edges"] is None)
    # Timed, not compared: with 2 rounds of ~10 ms on a loaded CI machine (xdist workers beside it) the
    # network alone has measured 2.3x the whole jump, so no inequality between the two is asserted here.
    assert r["network_s"] is None or 0 < r["network_s"] < float("inf")
  with open(os.path.join(tmp_path, "jump_cost_quick.json")) as f:
    assert json.load(f)["rows"] == rows
  table = (tmp_path / "jump_cost_quick.md").read_text()
  assert table.count("| G-digits-MLP2-adabelief |") == len(rows)
