"""Does a jump point where the base optimizer goes? `python -m research.jump_direction`

For each (configuration, method, seed) it trains the base optimizer and the method as ``benchmarks.run``
does (the same minibatches, ``benchmarks.run.build_chunk``, a ``/run`` method at its own period) up to the
method's first jump, takes the jump ``d = theta_jump - theta_base`` (both right after the jump step), then
continues the base alone and compares ``d`` with the base's own displacement from the same point,
``D(h) = theta_base(t + h) - theta_base(t)``, every ``eval_every`` steps up to ``--periods`` of the method's
periods ahead:

* ``cos(h)``: the cosine between ``d`` and ``D(h)`` over all parameters (1: the jump points exactly where
  the base goes; 0: at right angles to it);
* ``|D(h)| / |d|``: how far the base has gone, in jump lengths.

The step where ``|D(h)|`` first reaches ``|d|`` is the jump's realized horizon (how many base steps the jump's
length stands for); ``cos`` there says whether the jump went the same way. A jump that is right but timid
has a high cosine at a short realized horizon; a jump pointed the wrong way has a low cosine at every ``h``.
``--orders K`` averages ``D(h)`` over K minibatch orders from the same point, to take out the noise no
prediction can foresee.
Writes ``research/results/jump_direction.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import run as bench
from research.jump_scale import _train, case_task, publish

HERE = os.path.dirname(os.path.abspath(__file__))
# The README's NiNo on MLPs and transformers, where it saves little, and on CNNs, where it saves much.
CASES = (("G-FM-MLP3-adamw-cos", "nino-ours/rate/run"), ("G-FM-MLP2-adam", "nino-ours/rate/run"),
         ("G-LM-2-40-adam-lin", "nino-ours/rate/run"), ("G-LM-4-16-adamw", "nino-ours/rate/run"),
         ("G-FM-CNN24-adam-cos", "nino-ours/rate/run"), ("G-C10-CNN20-adamw-step", "nino-ours/rate/run"))


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def direction(task, method: str, s: bench.Settings, seed: int, periods: int = 3,
              orders: int = 1) -> dict[str, Any]:
  """The first jump of ``method`` against the base's displacement after it (module docstring). With
  ``orders`` > 1 the base continues from the jump's point with that many minibatch orders (the run's own,
  then seeds ``1000 + seed * 100 + j``) and ``D(h)`` is their mean: the minibatch noise shrinks as
  ``1 / sqrt(orders)`` while the direction all orders share stays."""
  ms = bench.method_settings(task, method, s)
  jump = ms.ctx * ms.interval  # the first jump's step (0-based)
  cb, _ = _train(task, "adam", s, seed, 0, jump + 1)
  cj, _ = _train(task, method, s, seed, 0, jump + 1)
  tb, tj = np.asarray(_flat(cb[0])), np.asarray(_flat(cj[0]))
  d = tj - tb
  horizon = min(periods * jump, task.spec.steps - (jump + 1))
  runs = [_train(task, "adam", s, seed, jump + 1, horizon, carry=jax.tree.map(jnp.copy, cb),
                 order=None if j == 0 else 1000 + seed * 100 + j, read=lambda c: np.asarray(_flat(c[0])))[1]
          for j in range(orders)]
  hs = [min(h, horizon) for h in range(s.eval_every, horizon + s.eval_every, s.eval_every)]
  snaps = zip(hs, np.mean(runs, axis=0), strict=True)
  dn = float(np.linalg.norm(d))
  rows = []
  for h, theta in snaps:
    big_d = theta - tb
    bn = float(np.linalg.norm(big_d))
    rows.append({"h": h, "cos": float(d @ big_d / max(dn * bn, 1e-30)), "ratio": bn / max(dn, 1e-30)})
  reach = next((r for r in rows if r["ratio"] >= 1.0), None)
  return {"config": task.name, "method": method, "seed": seed, "jump_step": jump + 1, "period": jump,
          "orders": orders,
          "jump_norm": dn, "params_norm": float(np.linalg.norm(tb)), "rows": rows,
          "realized_horizon": None if reach is None else reach["h"],
          "cos_at_realized": None if reach is None else reach["cos"],
          "max_cos": max(r["cos"] for r in rows), "h_max_cos": max(rows, key=lambda r: r["cos"])["h"]}


def format_table(results: list[dict[str, Any]]) -> str:
  lines = ["A method's first jump `d` against the base's own displacement `D(h)` from the same point, `h` "
           "steps later (`python -m research.jump_direction`): the jump's length relative to the "
           "parameters, the step `h` where `|D(h)|` first reaches `|d|` (realized horizon, in base steps "
           "and in the method's periods; `—`: not within the steps read) and the cosine there, and the "
           "largest cosine over the steps read and its `h`; orders: how many minibatch orders `D(h)` is the "
           "mean of.", "",
           "| configuration | method | seed | orders | period | jump / params | realized horizon (steps) | "
           "in periods | cos there | max cos | at h |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    rh = r["realized_horizon"]
    lines.append(f"| {r['config']} | {r['method']} | {r['seed']} | {r.get('orders', 1)} | {r['period']} | "
                 f"{r['jump_norm'] / max(r['params_norm'], 1e-30):.3f} | "
                 f"{'—' if rh is None else rh} | {'—' if rh is None else format(rh / r['period'], '.2f')} | "
                 f"{'—' if rh is None else format(r['cos_at_realized'], '.2f')} | {r['max_cos']:.2f} | "
                 f"{r['h_max_cos']} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(prog="python -m research.jump_direction", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=None, help="configuration:method pairs, comma-separated")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--periods", type=int, default=3, help="how far to follow the base, in periods")
  parser.add_argument("--orders", type=int, default=1,
                      help="minibatch orders the base continues with; D(h) is their mean (1: the run's own)")
  parser.add_argument("--stem", default="jump_direction",
                      help="results file name (research/results/<stem>.md)")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args(argv)
  cases = CASES if args.cases is None else [tuple(c.split(":", 1)) for c in args.cases.split(",")]
  results = []
  for name, method in cases:
    s, task = case_task(name, args.data_dir)
    for seed in [int(k) for k in args.seeds.split(",")]:
      results.append(direction(task, method, s, seed, args.periods, args.orders))
      print(f"{name} {method} seed {seed}: done", flush=True)
  return publish(args.out, args.stem, results, format_table(results))


if __name__ == "__main__":
  main()
