"""How far each method is from the issue's 25 % schedule-length saving: the length curves, interpolated.

    python -m research.length_curves     # reads the finished runs; writes results/length_curves.{json,md,png}

The generalization suite measures a decaying schedule's saving on a grid of lengths (40, 55, 70, 85, 100 % of
the schedule, stretched): the shortest length whose final metric reaches the base's at full length, over
the base's own (`benchmarks/results/general_summary.md`). On that grid a saving is 0, 15, 30, 45 or 60 %, so
a method that needs 80 % of the schedule and one that needs 99 % both read 0 %. This script reads the same
runs (every method with all five lengths, the product's and the variants') and, per seed, interpolates the
final metric linearly between the grid's lengths to the first length where it reaches the goal (the base's
final metric at full length, same seed), for the method and for the base. The interpolated saving is
``1 - L_method / L_base``; `never`: no length up to 100 % reaches the goal (counted as the worst in the
median). It is an estimate between measured points, not a measurement at those lengths.

It also reads, for the same configuration and method, the step reduction inside the full-length schedule
(to the base's own final smoothed value; `benchmarks/results/general_summary.json`), to set the two side
by side: whether a method's length saving follows from how much faster it moves within one schedule.
The plot draws the final metric against length (mean over seeds, relative to the base at 100 %) per
configuration for the base and the README's NiNo settings with our weights and the official checkpoint,
with the 75 % runs where they exist.
"""

from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import run as bench  # noqa: E402

ALL_TASKS = bench.ALL_TASKS

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results")
LENGTHS = (*bench.LENGTHS, 100)
EXTRA = 75  # a length measured beside the grid where its runs exist: the 25 % saving exactly
FINER = tuple(sorted((*LENGTHS, EXTRA)))
PLOTTED = ("nino-ours/rate/run", "nino/rate/run")  # besides the base (the README's NiNo settings)
NEVER = bench.NEVER  # a seed (or configuration) whose every length ends short of the goal


def crossing(lengths: list[float], finals: list[float], goal: float, hib: bool) -> float | None:
  """The first length (linearly interpolated between grid points) whose final metric reaches ``goal``;
  None if none up to the last does."""
  sign = 1.0 if hib else -1.0
  gap = [sign * (f - goal) for f in finals]  # >= 0: reached
  for i, g in enumerate(gap):
    if g >= -1e-12:
      if i == 0:
        return float(lengths[0])
      g0 = gap[i - 1]
      return float(lengths[i - 1] + (lengths[i] - lengths[i - 1]) * (-g0) / (g - g0))
  return None


def _reaches(value: float, goal: float, hib: bool) -> bool:
  return value >= goal - 1e-12 if hib else value <= goal + 1e-12


def _grid_saving(mine: dict[int, float], base: dict[int, float], lengths: tuple[int, ...],
                 hib: bool) -> float | str:
  """One seed's ``1 - L_method / L_base`` on the grid ``lengths``: the first measured length reaching the
  base's final metric at 100 % (the base reaches it at 100 % at the latest); ``NEVER`` if none does."""
  goal = base[100]
  first = next((p for p in lengths if _reaches(mine[p], goal, hib)), None)
  first_b = next(p for p in lengths if _reaches(base[p], goal, hib))
  return NEVER if first is None else 100 * (1 - first / first_b)


def _median(values: list) -> float | None:
  """The median of savings with ``NEVER`` counted as the worst (``benchmarks.run``'s rule); None if that
  median is a ``NEVER``."""
  return bench._median_never(values)[0]


def finals_by_length(found: dict, name: str, method: str,
                     lengths: tuple[int, ...] = LENGTHS) -> dict[int, dict[int, float]] | None:
  """``{seed: {length %: final metric}}`` for the seeds that have every length, or None."""
  per: dict[int, dict[int, float]] = {}
  for pct in lengths:
    key = name if pct == 100 else f"{name}@{pct}"
    for r in found.get(key, {}).get(method, []):
      per.setdefault(r["seed"], {})[pct] = r["final_full_val_metric"]
  per = {k: v for k, v in per.items() if len(v) == len(lengths)}
  return per or None


def rows(found: dict, summary_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  inside = {(r["config"], r["method"]): r for r in summary_rows}
  out = []
  for name in sorted(n for n in found if "@" not in n and "~" not in n and n in ALL_TASKS):
    if not any(f"{name}@{p}" in found for p in bench.LENGTHS):
      continue
    hib = ALL_TASKS[name].higher_is_better
    base = finals_by_length(found, name, "adam")
    if base is None:
      continue
    methods = sorted({m for p in LENGTHS for m in found.get(name if p == 100 else f"{name}@{p}", {})})
    for method in [m for m in methods if m != "adam"]:
      mine = finals_by_length(found, name, method)
      if mine is None:
        continue
      seeds = sorted(set(mine) & set(base))
      savings, grid = [], []
      for k in seeds:
        goal = base[k][100]
        lb = crossing(list(LENGTHS), [base[k][p] for p in LENGTHS], goal, hib)  # <= 100: reaches itself
        lm = crossing(list(LENGTHS), [mine[k][p] for p in LENGTHS], goal, hib)
        savings.append(NEVER if lm is None else 100 * (1 - lm / lb))
        grid.append(_grid_saving(mine[k], base[k], LENGTHS, hib))
      finer = _finer_grid(found, name, method, hib, seeds)
      ref = inside.get((name, method), {})
      out.append({"config": name, "method": method, "seeds": len(seeds),
                  "interpolated_saving": _median(savings), "never": sum(x == NEVER for x in savings),
                  "grid_saving": _median(grid),
                  **finer,
                  "per_seed": savings,
                  "reduction_inside": ref.get("reduction_reached"), "never_inside": ref.get("never")})
  return out


def _finer_grid(found: dict, name: str, method: str, hib: bool, seeds: list[int]) -> dict[str, Any]:
  """The grid saving with ``EXTRA`` % measured too, on the seeds where the base and the method have it:
  ``finer_saving`` (median, `never` the worst), ``finer_seeds``, and ``reach_at_extra``: how many of those
  seeds' runs at ``EXTRA`` % reach the base's final metric at 100 %."""
  base, mine = (finals_by_length(found, name, m, FINER) for m in ("adam", method))
  if base is None or mine is None:
    return {"finer_saving": None, "finer_seeds": 0, "reach_at_extra": None}
  savings, reach = [], 0
  for k in [k for k in seeds if k in base and k in mine]:
    savings.append(_grid_saving(mine[k], base[k], FINER, hib))
    reach += _reaches(mine[k][EXTRA], base[k][100], hib)
  return {"finer_saving": _median(savings), "finer_seeds": len(savings),
          "reach_at_extra": reach}


def _ranks(v: np.ndarray) -> np.ndarray:
  """Ranks with ties given their mean rank (as Spearman's correlation takes them)."""
  order = np.argsort(v, kind="stable")
  r = np.empty(len(v))
  r[order] = np.arange(len(v), dtype=float)
  for value in np.unique(v):
    tied = v == value
    r[tied] = r[tied].mean()
  return r


def relation(rs: list[dict[str, Any]]) -> dict[str, float] | None:
  """Across (configuration, method) pairs with no seed `never` (inside the schedule or by length): the
  Spearman rank correlation of the interpolated length saving with the step reduction inside the
  full-length schedule, the least-squares line ``saving = slope * reduction + intercept``, and the
  reduction inside the schedule at which that line reaches a 25 % saving."""
  pts = [(r["reduction_inside"], r["interpolated_saving"]) for r in rs
         if r["reduction_inside"] is not None and r["interpolated_saving"] is not None
         and not r["never_inside"] and not r["never"]]
  if len(pts) < 3:
    return None
  x, y = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
  rho = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
  slope, intercept = np.polyfit(x, y, 1)
  return {"pairs": len(pts), "spearman": rho, "slope": float(slope), "intercept": float(intercept),
          "reduction_for_25": float((25.0 - intercept) / slope)}


def _median_pct(values: list[float | None]) -> str:
  """The median of per-configuration savings, ``None`` (never) counted as the worst."""
  return _pct(_median([NEVER if v is None else v for v in values]))


def _pct(x: float | None) -> str:
  return "never" if x is None else f"{x:.0f} %"


def table(rs: list[dict[str, Any]]) -> str:
  lines = ["Schedule-length saving on the decaying configurations, interpolated between the grid's lengths "
           "(`python -m research.length_curves`; median over seeds, `never` counted as the worst): "
           "1 - L_method / L_base, L the first length (linear between 40, 55, 70, 85, 100 %) whose final "
           "metric reaches the base's final metric at 100 % (same seed). Grid: the same on the grid alone, "
           "as `benchmarks/results/general_summary.md` reports it. Inside: the median step reduction "
           "within the full-length schedule to the base's final smoothed value (seeds that reach it; "
           "`(n never)` those that do not). With 75 %: where the base and the method were also run at "
           f"{EXTRA} % of the schedule (`<config>@{EXTRA}`), the grid saving with that length measured, and "
           f"how many seeds' runs at {EXTRA} % reach the base's final metric at 100 % (blank: not run).", "",
           "| configuration | method | seeds | interpolated saving | never | grid saving | with 75 % "
           "| reach at 75 % | inside the schedule |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rs:
    inside = "—" if r["reduction_inside"] is None else f"{r['reduction_inside']:.1f} %"
    if r.get("never_inside"):
      inside += f" ({r['never_inside']} never)"
    finer, reach = "", ""
    if r["finer_seeds"]:
      finer, reach = _pct(r["finer_saving"]), f"{r['reach_at_extra']} of {r['finer_seeds']}"
    lines.append(f"| {r['config']} | {r['method']} | {r['seeds']} | {_pct(r['interpolated_saving'])} | "
                 f"{r['never']} | {_pct(r['grid_saving'])} | {finer} | {reach} | {inside} |")
  lines += ["", "Per method, over the configurations it has all lengths on: median interpolated saving "
            "(a configuration's `never` counted as the worst).", "",
            "| method | configurations | median interpolated saving | median grid saving "
            "| median with 75 % (configurations) |",
            "|---|---|---|---|---|"]
  for m in sorted({r["method"] for r in rs}):
    mine = [r for r in rs if r["method"] == m]
    finer = [r for r in mine if r["finer_seeds"]]
    lines.append(f"| {m} | {len(mine)} | {_median_pct([r['interpolated_saving'] for r in mine])} | "
                 f"{_median_pct([r['grid_saving'] for r in mine])} | "
                 + (f"{_median_pct([r['finer_saving'] for r in finer])} ({len(finer)})" if finer else "")
                 + " |")
  rel = relation(rs)
  if rel is not None:
    lines += ["", f"Over the {rel['pairs']} (configuration, method) pairs with no seed `never`, the "
              f"interpolated length saving follows the step reduction inside the full-length schedule: "
              f"Spearman {rel['spearman']:.2f}, least squares saving = {rel['slope']:.2f} x reduction "
              f"{rel['intercept']:+.1f} points, which reaches a 25 % saving at a reduction of "
              f"{rel['reduction_for_25']:.0f} % inside the schedule."]
  return "\n".join(lines) + "\n"


def plot(found: dict, path: str) -> None:
  names = sorted(n for n in found if "@" not in n and "~" not in n and n in ALL_TASKS
                 and any(f"{n}@{p}" in found for p in bench.LENGTHS))
  cols = (len(names) + 1) // 2
  fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6), squeeze=False)
  for ax, name in zip(axes.flat, names, strict=False):  # an odd count leaves the last axis empty
    spec = ALL_TASKS[name]
    scale = 100.0 if spec.metric == "accuracy" else 1.0
    base = finals_by_length(found, name, "adam")
    goal = {k: v[100] for k, v in base.items()}
    for method, style in (("adam", "k-"), (PLOTTED[0], "C0o-"), (PLOTTED[1], "C1s--")):
      lengths = FINER  # with the 75 % runs where the method has them
      per = finals_by_length(found, name, method, FINER)
      if per is None:
        lengths, per = LENGTHS, finals_by_length(found, name, method)
      if per is None:
        continue
      seeds = sorted(set(per) & set(goal))
      ys = [scale * np.mean([per[k][p] - goal[k] for k in seeds]) for p in lengths]
      ax.plot(lengths, ys, style, ms=3, label=method if method != "adam" else "base")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(75, color="grey", lw=0.5, ls=":")
    ax.set_title(name.removeprefix("G-"), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("schedule length (%)", fontsize=7)
    ax.set_ylabel(("accuracy (points)" if scale == 100 else "perplexity") + " - base at 100 %", fontsize=7)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6)
  fig.suptitle("Final metric against schedule length, mean over seeds, relative to the base at full length "
               "(dotted: 75 %, the issue's 25 % saving)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  del argv
  from research import variants  # registers the variants as methods, so their runs are read too
  variants.register_all()
  suite = "general"
  s, _, seeds = bench.SUITES[suite]
  found = bench._finished_runs(suite, seeds, s, [OUT, os.path.join(bench.REPO, "benchmarks", "results")],
                               bench.TASK_SEEDS.get(suite, {}))
  summary = []
  for root in (os.path.join(bench.REPO, "benchmarks", "results"), OUT):
    path = os.path.join(root, f"{suite}_summary.json")
    if os.path.exists(path):
      with open(path) as f:
        summary += json.load(f)["rows"]
  rs = rows(found, summary)
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, "length_curves.json"), "w") as f:
    json.dump({"rows": rs, "relation": relation(rs)}, f, indent=1)
  text = table(rs)
  with open(os.path.join(OUT, "length_curves.md"), "w") as f:
    f.write(text)
  plot(found, os.path.join(OUT, "length_curves.png"))
  print(text)
  return rs


if __name__ == "__main__":
  main()
