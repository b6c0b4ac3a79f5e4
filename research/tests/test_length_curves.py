"""research.length_curves: the interpolated schedule-length saving."""

from __future__ import annotations

import pytest

from research import length_curves as lc

LENGTHS = [40, 55, 70, 85, 100]


def test_crossing_interpolates_between_grid_lengths():
  # accuracy rising 1 point per 15 % of length; the goal sits a third of the way from 70 to 85 %
  finals = [0.0, 1.0, 2.0, 3.0, 4.0]
  assert lc.crossing(LENGTHS, finals, 2 + 1 / 3, hib=True) == pytest.approx(75.0)
  assert lc.crossing(LENGTHS, finals, -1.0, hib=True) == 40.0  # the shortest length already reaches it
  assert lc.crossing(LENGTHS, finals, 4.5, hib=True) is None  # no length reaches it
  assert lc.crossing(LENGTHS, finals, 4.0, hib=True) == 100.0  # the base reaches its own goal at 100 %


def test_crossing_for_lower_is_better_takes_the_first_crossing():
  perplexity = [9.0, 8.0, 7.5, 7.8, 7.0]  # dips below 7.6 between 55 and 70 %, rises, falls again
  assert lc.crossing(LENGTHS, perplexity, 7.6, hib=False) == pytest.approx(55 + 15 * 0.4 / 0.5)


def test_rows_read_saving_per_seed_and_count_never():
  def runs(vals):
    return [{"seed": k, "final_full_val_metric": v} for k, v in enumerate(vals)]
  name = "G-FM-CNN24-adam-cos"  # accuracy: higher is better
  base = {40: [0.0, 0.0], 55: [1.0, 1.0], 70: [2.0, 2.0], 85: [3.0, 3.0], 100: [4.0, 4.0]}
  mine = {40: [1.0, 0.0], 55: [2.5, 0.5], 70: [4.0, 1.0], 85: [5.0, 2.0], 100: [6.0, 3.0]}
  found = {(name if p == 100 else f"{name}@{p}"): {"adam": runs(base[p]), "m": runs(mine[p])} for p in base}
  summary = [{"config": name, "method": "m", "reduction_reached": 40.0, "never": 0}]
  (r,) = lc.rows(found, summary)
  assert r["per_seed"] == [pytest.approx(30.0), lc.NEVER]  # seed 0 reaches 4.0 at 70 %; seed 1 never
  assert r["never"] == 1 and r["interpolated_saving"] is None  # the median of two counts never as worst
  assert r["grid_saving"] is None and r["reduction_inside"] == 40.0


def test_a_length_run_beside_the_grid_refines_the_grid_saving():
  def runs(vals):
    return [{"seed": k, "final_full_val_metric": v} for k, v in enumerate(vals)]
  name = "G-LM-2-40-adam-lin"  # perplexity: lower is better
  base = {40: [9.0, 9.0], 55: [8.0, 8.0], 70: [7.0, 7.0], 75: [6.8, 6.8], 85: [6.5, 6.5], 100: [6.0, 6.0]}
  mine = {40: [8.0, 9.0], 55: [7.0, 8.0], 70: [6.2, 7.0], 75: [5.9, 6.4], 85: [5.5, 5.95], 100: [5.0, 5.9]}
  found = {(name if p == 100 else f"{name}@{p}"): {"adam": runs(base[p]), "m": runs(mine[p])} for p in base}
  (r,) = lc.rows(found, [])
  assert r["grid_saving"] == pytest.approx(15.0)  # both seeds first reach 6.0 at 85 % on the grid
  assert r["finer_seeds"] == 2 and r["reach_at_extra"] == 1  # at 75 %: seed 0 (5.9) does, seed 1 (6.4) not
  assert r["finer_saving"] == pytest.approx((25.0 + 15.0) / 2)
  assert "| 20 % | 1 of 2 |" in lc.table([r])


def test_relation_fits_saving_against_the_reduction_inside_the_schedule():
  rs = [{"reduction_inside": x, "interpolated_saving": 0.5 * x + 5, "never_inside": 0, "never": 0}
        for x in (10.0, 20.0, 40.0)]
  rs.append({"reduction_inside": 90.0, "interpolated_saving": None, "never_inside": 0, "never": 1})  # out
  rel = lc.relation(rs)
  assert rel["pairs"] == 3 and rel["spearman"] == pytest.approx(1.0)
  assert rel["slope"] == pytest.approx(0.5) and rel["intercept"] == pytest.approx(5.0)
  assert rel["reduction_for_25"] == pytest.approx(40.0)


def test_ranks_give_ties_their_mean_rank():
  import numpy as np
  assert lc._ranks(np.array([5.0, 1.0, 5.0, 3.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
