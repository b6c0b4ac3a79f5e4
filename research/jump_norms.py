"""Where a method's first jump puts each tensor's norm, against the base's: `python -m research.jump_norms`

For each (configuration, method, seed) it trains the base optimizer and the method as ``benchmarks.run``
does (the same minibatches, ``benchmarks.run.build_chunk``; a per-run method at its own interval,
``benchmarks.run.method_settings``) up to the method's first jump, and reads per parameter tensor (leaf):
the norm of the base's weights right after the jump step, ``|theta_base|``, the norm after the method's jump,
``|theta_jump|``, the relative jump ``|d| / |theta_base|`` (``d = theta_jump - theta_base``) and the cosine
of ``d`` with ``theta_base`` (1: the jump only scales the tensor up). The base is then continued to
``CHECKPOINTS`` times the jump step and to the run's end, and each leaf's norm is read there too. A leaf
whose jump takes its norm beyond the largest norm the base reaches at any of these points is
*overshot*: the jump extrapolated a growth the base itself never completes. Writes
``research/results/jump_norms.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import run as bench
from research.jump_scale import _train, case_task, publish

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINTS = (2, 4)  # the base's norms at these multiples of the first jump's step (and at the run's end)
# NiNo with the README's settings: harmful on LM-1-48 (Lion, cosine), mildly useful at full length on
# LM-2-40 (Adam, linear decay), and saving 45 % of the schedule on FM-CNN24 (Adam, cosine).
CASES = (("G-LM-1-48-lion-cos", "nino-ours/rate/run"), ("G-LM-2-40-adam-lin", "nino-ours/rate/run"),
         ("G-FM-CNN24-adam-cos", "nino-ours/rate/run"))


def _flat(params) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float64)
          for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/").items()}


def _norm(x: np.ndarray) -> float:
  return float(np.sqrt(np.sum(np.square(x))))


def jump_norms(task, method: str, s: bench.Settings, seed: int,
               checkpoints: tuple[int, ...] = CHECKPOINTS) -> dict[str, Any]:
  """Per leaf: the base's and the jump's norms at ``method``'s first jump, and the base's further on."""
  sm = bench.method_settings(task, method, s)
  jump = sm.ctx * sm.interval + 1  # steps taken when the first jump has been made
  (pb, ob), _ = _train(task, "adam", s, seed, 0, jump)
  (pj, _), _ = _train(task, method, sm, seed, 0, jump)
  fb, fj = _flat(pb), _flat(pj)
  later: dict[int, dict[str, np.ndarray]] = {}
  carry, at = (jax.tree.map(jnp.copy, pb), jax.tree.map(jnp.copy, ob)), jump
  for t in sorted({*(c * jump for c in checkpoints if c * jump < task.spec.steps), task.spec.steps}):
    carry, _ = _train(task, "adam", s, seed, at, t - at, carry=carry)
    at = t
    later[t] = _flat(carry[0])
  leaves = []
  for k in fb:
    d = fj[k] - fb[k]
    nb, nj, nd = _norm(fb[k]), _norm(fj[k]), _norm(d)
    base_later = {t: _norm(v[k]) for t, v in later.items()}
    leaves.append({"leaf": k, "size": int(fb[k].size), "base": nb, "jump": nj,
                   "relative_jump": nd / max(nb, 1e-30),
                   "cosine": float(np.vdot(d.ravel(), fb[k].ravel()) / max(nd * nb, 1e-30)),
                   "base_later": {str(t): v for t, v in base_later.items()},
                   "overshot": nj > max([nb, *base_later.values()])})
  return {"config": task.name, "method": method, "seed": seed, "jump_step": jump,
          "later_steps": sorted(later), "leaves": leaves}


def _overshoot(leaf: dict[str, Any]) -> float:
  """The norm after the jump over the largest norm the base reaches (> 1: overshot)."""
  return leaf["jump"] / max(leaf["base"], *leaf["base_later"].values(), 1e-30)


def format_table(results: list[dict[str, Any]]) -> str:
  lines = ["Per tensor, the norm of the base's weights right after a method's first jump, the norm after the "
           "jump, the relative jump `|d| / |theta|`, the cosine of the jump with the weights (1: it only "
           "scales them up) and the base's norm further on (`python -m research.jump_norms`). `overshot`: "
           "the jump takes the tensor beyond the largest norm the base reaches at any of these steps."]
  for r in results:
    later = r["later_steps"]
    n_over = sum(leaf["overshot"] for leaf in r["leaves"])
    worst = max(r["leaves"], key=_overshoot)
    lines += ["", f"{r['config']}, {r['method']}, seed {r['seed']}: first jump at step {r['jump_step']}; "
              f"{n_over} of {len(r['leaves'])} tensors overshot, the most {worst['leaf']} "
              f"({_overshoot(worst):.2f}x the base's largest norm).", "",
              "| tensor | size | base | after the jump | relative jump | cosine | "
              + " | ".join(f"base at {t}" for t in later) + " | overshot |",
              "|---|---|---|---|---|---|" + "---|" * len(later) + "---|"]
    for leaf in r["leaves"]:
      lines.append(f"| {leaf['leaf']} | {leaf['size']} | {leaf['base']:.3f} | {leaf['jump']:.3f} | "
                   f"{leaf['relative_jump']:.2f} | {leaf['cosine']:.2f} | "
                   + " | ".join(f"{leaf['base_later'][str(t)]:.3f}" for t in later)
                   + f" | {'yes' if leaf['overshot'] else ''} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(prog="python -m research.jump_norms", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  parser.add_argument("--format-only", action="store_true",
                      help="rewrite the table from the stored jump_norms.json")
  args = parser.parse_args(argv)
  if args.format_only:
    with open(os.path.join(args.out, "jump_norms.json")) as f:
      results = json.load(f)
  else:
    results = []
    for name, method in CASES:
      s, task = case_task(name, args.data_dir)
      results.append(jump_norms(task, method, s, args.seed))
      print(f"{name} {method} seed {args.seed}: done", flush=True)
  return publish(args.out, "jump_norms", results, format_table(results))


if __name__ == "__main__":
  main()
