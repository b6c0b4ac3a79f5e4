"""Is a harmful jump too long, or pointed the wrong way? `python -m research.jump_scale`

For each (configuration, method, seed) it trains the base optimizer and the method as ``benchmarks.run``
does (the same minibatches, ``benchmarks.run.build_chunk``) up to the method's first jump, takes the jump
``d = theta_jump - theta_base`` (both right after the jump step, with the base optimizer's state of that
step, which the jump does not change), and continues the base optimizer from ``theta_base + a * d`` until
just before the next jump, for scales ``a`` in ``SCALES`` (0: no jump; 1: the method's own jump) and, with
``--groups``, from ``theta_base + d`` restricted to one parameter group (a module's leaves) at a time. A
jump that is only too long gets better than the base at some ``a < 1``; one pointed the wrong way is worse
at every ``a > 0``. Writes ``research/results/jump_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp

from benchmarks import run as bench

HERE = os.path.dirname(os.path.abspath(__file__))
SCALES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
# NiNo's jumps harm LM-1-48 (Lion, warmup + cosine) on every seed and help LM-4-16 (AdamW, constant) and
# digits-MLP4 (Lion, linear decay).
CASES = (("G-LM-1-48-lion-cos", "nino-ours"), ("G-LM-1-48-lion-cos", "nino-ours/rate"),
         ("G-LM-4-16-adamw", "nino-ours"), ("G-digits-MLP4-lion-lin", "nino-ours"))


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _train(task, method: str, s: bench.Settings, seed: int, start: int, steps: int, carry=None,
           order: int | None = None, read: Callable[[Any], Any] | None = None):
  """``steps`` steps of ``method`` from step ``start`` (from ``carry``, or its initial state): the carry and,
  after each chunk of at most ``s.eval_every`` steps, its mean training loss (or ``read(carry)``).
  ``order``: the seed of the minibatch order (default ``seed``'s, as the benchmark runs)."""
  chunk, c0 = bench.build_chunk(task, method, bench.method_settings(task, method, s), seed)  # as run.py
  c = c0 if carry is None else carry
  out = []
  for st in range(start, start + steps, s.eval_every):
    n = min(s.eval_every, start + steps - st)
    c, tl = chunk(c, task.batch_indices(seed if order is None else order, st, n))
    out.append(float(tl) if read is None else read(c))
  return c, out


def scale_jump(task, method: str, s: bench.Settings, seed: int, scales=SCALES,
               groups: bool = False) -> dict[str, Any]:
  """The base continued from ``theta_base + a * d`` (and per group) after ``method``'s first jump."""
  ms = bench.method_settings(task, method, s)  # a per-run method (``/run``) records every steps / 50
  jump = ms.ctx * ms.interval  # the first jump's step (0-based): the method's period
  rest = jump - s.eval_every  # continue until one chunk before the next jump
  (pb, ob), _ = _train(task, "adam", s, seed, 0, jump + 1)
  (pj, _), _ = _train(task, method, s, seed, 0, jump + 1)
  evaluate = jax.jit(task.evaluate)

  def cont(params) -> dict[str, float]:
    (p, _), losses = _train(task, "adam", s, seed, jump + 1, rest, carry=(_copy(params), _copy(ob)))
    ev = jax.device_get(evaluate(p))
    return {"train_loss_first": losses[0], "train_loss_last": losses[-1], "val_loss": float(ev["loss"]),
            "val_metric": float(ev["metric"])}

  rows = []
  for a in scales:
    rows.append({"what": f"a = {a:g}", "scale": a,
                 **cont(jax.tree.map(lambda b, j, a=a: b + a * (j - b), pb, pj))})
  if groups:
    fb = flax.traverse_util.flatten_dict(flax.core.unfreeze(pb), sep="/")
    fj = flax.traverse_util.flatten_dict(flax.core.unfreeze(pj), sep="/")
    names = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in fb))
    for g in names:
      keys = [k for k in fb if k.rsplit("/", 1)[0] == g]
      mixed = flax.traverse_util.unflatten_dict({k: fj[k] if k in keys else fb[k] for k in fb}, sep="/")
      dn = float(sum(jnp.sum((fj[k] - fb[k]) ** 2) for k in keys)) ** 0.5
      wn = float(sum(jnp.sum(fb[k] ** 2) for k in keys)) ** 0.5
      rows.append({"what": f"only {g}", "group": g, "relative_jump": dn / max(wn, 1e-30), **cont(mixed)})
  return {"config": task.name, "method": method, "seed": seed, "jump_step": jump + 1,
          "continued_steps": rest, "rows": rows}


def format_table(results: list[dict[str, Any]]) -> str:
  lines = ["The base optimizer continued from `theta_base + a * d` after a method's first jump "
           "(`d`: the jump; a = 0 is no jump, a = 1 the method's own), or from the jump in one parameter "
           "group only (relative jump: the norm of the group's jump over its weights' norm): training loss "
           "over the first and the last chunk of the interval, and the validation loss at its end "
           "(`python -m research.jump_scale`).", "",
           "| configuration | method | seed | start | relative jump | first chunk | last chunk | val loss | "
           "vs a = 0 |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    ref = r["rows"][0]["val_loss"]
    for row in r["rows"]:
      rel = row.get("relative_jump")
      lines.append(f"| {r['config']} | {r['method']} | {r['seed']} | {row['what']} | "
                   f"{'' if rel is None else format(rel, '.3f')} | {row['train_loss_first']:.4f} | "
                   f"{row['train_loss_last']:.4f} | {row['val_loss']:.4f} | {row['val_loss'] - ref:+.4f} |")
  return "\n".join(lines)


def case_task(name: str, data_dir: str | None) -> tuple[bench.Settings, Any]:
  """A generalization-suite configuration's settings and task, as ``benchmarks.run`` trains it."""
  s = bench.settings_for("general", name, bench.GENERAL)
  return s, bench.make_suite_task(name, data_dir or bench.default_data_dir(), s)


def publish(out: str, stem: str, results: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
  """Writes a study's ``<out>/<stem>.{json,md}`` (``benchmarks.run.write_results``) and prints its table."""
  bench.write_results(out, stem, results, table)
  print(table)
  return results


def main(argv=None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(prog="python -m research.jump_scale", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--groups", default="G-LM-1-48-lion-cos",
                      help="configurations whose jumps are also taken one parameter group at a time (on "
                      "the first seed)")
  parser.add_argument("--cases", default=None,
                      help="configuration:method pairs, comma-separated (default: the harmful and helpful "
                      "jumps of CASES)")
  parser.add_argument("--scales", default=None, help="comma-separated scales a (default: 0 to 1, SCALES)")
  parser.add_argument("--stem", default="jump_scale", help="results file name (research/results/<stem>.md)")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args(argv)
  cases = CASES if args.cases is None else [tuple(c.split(":", 1)) for c in args.cases.split(",")]
  scales = SCALES if args.scales is None else tuple(float(a) for a in args.scales.split(","))
  if scales[0] != 0.0:
    parser.error("--scales must start with 0 (no jump): the table compares every scale with it")
  results = []
  seeds = [int(k) for k in args.seeds.split(",")]
  for name, method in cases:
    s, task = case_task(name, args.data_dir)
    for seed in seeds:
      groups = name in args.groups.split(",") and seed == seeds[0]
      results.append(scale_jump(task, method, s, seed, scales=scales, groups=groups))
      print(f"{name} {method} seed {seed}: done", flush=True)
  return publish(args.out, args.stem, results, format_table(results))


if __name__ == "__main__":
  main()
