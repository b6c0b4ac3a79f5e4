"""Wall time to Adam's target, with each method's costs measured side by side with Adam's in one process.

The ``full`` suite's time columns come from runs made hours apart on a shared 2-core machine, so they carry
whatever else the machine was doing. Here the costs are measured under the same load: per task, Adam and
the method train chunks of ``L`` steps in alternating order, ``repeats`` times, in one process, each chunk
from the same saved state (a copy, so donation leaves the template intact):

* ``c_a``, ``c_m``: median seconds per step of Adam and of the method between jumps (the suite's schedule,
  a chunk with no jump and no recorded state);
* ``o_m``: what one jump period adds: the median time of an ``L``-step chunk holding one jump and the
  ``ctx`` recordings that feed it (the same method with ``interval = L / ctx``, so a jump every ``L``
  steps), minus ``L * c_m``.

With the suite's per-seed step counts ``s`` and jump steps (``runs/full/<task>/<method>/seed<k>.json``):

.. math::

  T_m = s_m c_m + n_m o_m, \\qquad T_a = s_a c_a, \\qquad
  \\text{paired time reduction} = 1 - T_m / T_a,

where ``n_m`` is the number of jumps at or before step ``s_m``; medians over seeds (a seed that never
reaches Adam's value has no time). Steps are the runs' own; only the per-step and per-jump costs are
re-measured, so this is the suite's time column without the load of other jobs.

Chunks are ``--steps`` long, or by default as long as it takes Adam about ``--chunk-seconds`` (0.25 s; at
least 20 steps, a multiple of ``ctx``, and short enough that two chunks hold no scheduled jump), so that the
fixed cost of a call (dispatch, the state copy) does not swamp a task as small as digits (0.1 ms a step).

    python -m benchmarks.paired_time                                   # every task and method in full.json
    python -m benchmarks.paired_time --tasks FM-32 --methods wnn+,nino-ours
    python -m benchmarks.paired_time --quick     # digits, 2 methods: paired_time_quick.{json,md}
    python -m benchmarks.paired_time --suite general   # held-out configurations: paired_time_general.*
    python -m benchmarks.paired_time --suite general --reproject  # stored costs onto the runs as they are now

(``--reproject`` measures nothing: after more seeds or recomputed runs, it projects each stored task's
measured costs onto the suite's current runs, so that the medians cover every finished seed.)

(With ``--suite general`` "Adam" is each configuration's own base optimizer, the method ``adam`` of the
suite, and its runs give the steps; ``benchmarks.run --suite general`` then adds the column to its summary.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optax_nowcast as onc
from benchmarks import run as R

RESULTS = os.path.join(R.REPO, "benchmarks", "results")


def _jumps(carry) -> int:
  nc = onc.find_nowcast_state(carry[1])
  return 0 if nc is None else int(nc.n_jumps)


class _Timer:
  """One compiled chunk and the state it restarts from on every timed call."""

  def __init__(self, task, method: str, s: R.Settings, steps: int):
    chunk, carry = R.build_chunk(task, method, s, seed=0)
    self.steps = steps
    self.idx = [task.batch_indices(0, i * steps, steps) for i in range(2)]
    self.fn = chunk.lower(carry, self.idx[0]).compile()
    carry, _ = self.fn(carry, self.idx[0])  # steps 0..L-1: fills the first jump's history, if any
    self.template = jax.block_until_ready(carry)
    self.jumps = 0
    self()  # a warm-up call, which also counts the chunk's jumps

  def __call__(self) -> float:
    carry = jax.block_until_ready(jax.tree.map(jnp.copy, self.template))
    t0 = time.perf_counter()
    carry, loss = self.fn(carry, self.idx[1])
    jax.block_until_ready((carry, loss))
    dt = time.perf_counter() - t0
    self.jumps = _jumps(carry) - _jumps(self.template)
    return dt


def chunk_steps(task, s: R.Settings, seconds: float, probe: int = 20) -> int:
  """Steps in a chunk that takes Adam about ``seconds``: a multiple of ``ctx``, at least ``probe``, and at
  most half a jump period (the timed chunk, steps ``L..2L-1``, must not reach the first jump)."""
  probe = -(-probe // s.ctx) * s.ctx
  timer = _Timer(task, "adam", s, probe)
  per_step = float(np.median([timer() for _ in range(3)])) / probe
  cap = max(probe, (s.ctx * s.interval // 2) // s.ctx * s.ctx)
  want = -(-int(np.ceil(seconds / per_step)) // s.ctx) * s.ctx
  return int(min(max(want, probe), cap))


def measure(task, methods: list[str], s: R.Settings, steps: int = 20, repeats: int = 5) -> dict[str, Any]:
  """Per method: Adam's and the method's seconds per step, and the seconds one jump period adds."""
  if steps % s.ctx:
    raise ValueError(f"steps ({steps}) must be a multiple of ctx ({s.ctx}): the jump chunk records every "
                     f"steps / ctx steps.")
  adam = _Timer(task, "adam", s, steps)
  out = {}
  for method in methods:
    if method == "adam":
      continue
    plain = _Timer(task, method, R.method_settings(task, method, s), steps)
    if plain.jumps:
      raise RuntimeError(f"{method}: the between-jumps chunk jumped ({plain.jumps}); lower steps.")
    jumper = None
    if onc.find_nowcast_state(plain.template[1]) is not None:  # it jumps (wp1..wp3 alone never do)
      # Rollback needs its 10-step window inside one recording interval (`_nino_ours(rollback=True)`).
      interval = max(steps // s.ctx, 12 if "+rb" in method else 1)
      jumper = _Timer(task, method, dataclasses.replace(s, interval=interval), interval * s.ctx)
    ta, tm, tj = [], [], []
    for _ in range(repeats):
      ta.append(adam())
      tm.append(plain())
      if jumper is not None:
        tj.append(jumper())
    c_a, c_m = float(np.median(ta)) / steps, float(np.median(tm)) / steps
    jumps = 0 if jumper is None else jumper.jumps
    if jumper is not None and jumps != 1:
      raise RuntimeError(f"{method}: the jump chunk made {jumps} jumps, expected 1.")
    out[method] = {"chunk_steps": steps, "adam_s_per_step": c_a, "s_per_step": c_m, "step_ratio": c_m / c_a,
                   "period_overhead_s": float(np.median(tj)) - jumper.steps * c_m if tj else 0.0,
                   "adam_chunks_s": ta, "chunks_s": tm, "jump_chunks_s": tj}
  return out


def project(costs: dict[str, Any], summary: dict[str, Any], runs: dict[str, list[dict]]) -> dict[str, Any]:
  """Paired times to Adam's target per seed and their medians, from measured costs and the suite's runs."""
  adam_steps = {r["seed"]: r["steps_to_target"] for r in summary["adam"]["per_seed"]}
  out = {}
  for method, c in costs.items():
    if method not in summary:
      continue
    jump_steps = {r["seed"]: r["jump_steps"] for r in runs[method]}
    rows = []
    for r in summary[method]["per_seed"]:
      st, sa = r["steps_to_target"], adam_steps.get(r["seed"])
      n = None if st is None else sum(1 for j in jump_steps[r["seed"]] if j <= st)
      t, ta = R.paired_seconds(c, st, jump_steps[r["seed"]]), R.paired_seconds(c, sa)
      rows.append({"seed": r["seed"], "steps_to_target": st, "jumps_to_target": n, "time_s": t,
                   "adam_time_s": ta, "time_reduction_pct": 100 * (1 - t / ta) if t and ta else None,
                   "reduction_pct": r["reduction_pct"]})
    out[method] = {**{k: v for k, v in c.items() if not k.endswith("chunks_s")}, "per_seed": rows,
                   "median": {k: _median_all(rows, k) for k in ("time_s", "adam_time_s", "time_reduction_pct",
                                                  "reduction_pct", "jumps_to_target")}}
  return out


def _median_all(rows: list[dict], key: str) -> float | None:
  """The median of ``key`` over seeds, or None if any seed has none (it never reached the target)."""
  values = [x[key] for x in rows]
  return None if any(v is None for v in values) else float(np.median(values))


def _f(x, fmt):
  return "—" if x is None else format(x, fmt)


def format_table(result: dict[str, Any]) -> str:
  suite = result.get("suite", "full")
  base = "Adam" if suite == "full" else "the base optimizer"
  lines = [
      f"Paired wall time to {base}'s final value (`python -m benchmarks.paired_time --suite {suite}`; chunks "
      f"of the steps in the second column, {result['repeats']} alternating repeats, backend "
      f"{result['backend']}, {result['cpu_count']} cores): costs measured side by side with {base}'s in one "
      f"process, steps and jumps from the `{suite}` suite's runs; medians over seeds (— where a seed never "
      f"reached {base}'s value).", "",
      "| task | chunk | method | base ms/step | method ms/step (ratio) | s per jump period | jumps to target "
      "| steps reduction | paired time to target (s) | base's (s) | paired time reduction |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for task, methods in result["tasks"].items():
    for m, r in methods.items():
      md = r["median"]
      lines.append(
          f"| {task} | {r.get('chunk_steps', result.get('steps') or '?')} | {m} "
          f"| {1e3 * r['adam_s_per_step']:.3f} | {1e3 * r['s_per_step']:.3f} "
          f"({r['step_ratio']:.2f}) | {r['period_overhead_s']:.3f} | {_f(md['jumps_to_target'], '.0f')} "
          f"| {_f(md['reduction_pct'], '.1f')} % | {_f(md['time_s'], '.3g')} "
          f"| {_f(md['adam_time_s'], '.3g')} | {_f(md['time_reduction_pct'], '.1f')} % |")
  return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.paired_time", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", default="full", choices=sorted(R.SUITES),
                      help="whose finished runs give the steps and jumps (default: full)")
  parser.add_argument("--tasks", default=None, help="comma-separated; default: every task of the suite")
  parser.add_argument("--methods", default=None, help="comma-separated; default: every method of the task")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per timed chunk (a multiple of ctx); default: see --chunk-seconds")
  parser.add_argument("--chunk-seconds", type=float, default=0.25,
                      help="without --steps, chunks as long as it takes Adam about this long")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="digits, linefit and wnn+, 2 repeats")
  parser.add_argument("--reproject", action="store_true",
                      help="measure nothing: project the stored costs onto the suite's current runs")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
  s0, _, seeds = R.SUITES[args.suite]
  found = R._finished_runs(args.suite, seeds, s0, list(dict.fromkeys([args.out, RESULTS])),
                           R.TASK_SEEDS.get(args.suite))
  if args.quick:
    args.tasks, args.methods, args.repeats = "digits", "linefit,wnn+", 2
  tasks = args.tasks.split(",") if args.tasks else [n for n in found if not R.is_variant(n)]
  name_out = "paired_time_quick" if args.quick else "paired_time"
  if args.suite != "full":
    name_out += f"_{args.suite}"
  path = os.path.join(args.out, f"{name_out}.json")
  result = {"suite": args.suite, "steps": args.steps, "repeats": args.repeats,
            "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "tasks": {}}
  if os.path.exists(path):  # tasks measured earlier stay unless measured again
    with open(path) as f:
      result["tasks"] = json.load(f).get("tasks", {})
  table = format_table(result)
  if args.reproject:
    table = reproject(result, found, s0, args.suite, args.out, name_out)
    print(table)
    return result
  for name in tasks:
    if name not in found:
      raise ValueError(f"task {name!r} has no finished Adam runs in {RESULTS}/runs/{args.suite}: run "
                       f"`python -m benchmarks.run --suite {args.suite} --tasks {name} --methods adam,...` "
                       "first.")
    runs = found[name]
    methods = [m for m in (args.methods.split(",") if args.methods else runs) if m != "adam"]
    missing = [m for m in methods if m not in runs]
    if missing:
      raise ValueError(f"task {name}: no finished runs of {missing}; choose from {sorted(runs)}.")
    s = R.settings_for(args.suite, name, s0)
    task = R.make_suite_task(name, args.data_dir or R.default_data_dir(), s)
    t0 = time.perf_counter()
    # chunks shorter than half the shortest jump period of the methods (a per-run interval may be shorter)
    shortest = min([s, *(R.method_settings(task, m, s) for m in methods)], key=lambda x: x.interval)
    steps = args.steps or chunk_steps(task, shortest, args.chunk_seconds)
    costs = measure(task, methods, s, steps, args.repeats)
    summary = R.summarise_task(runs, R._spec_for(name, s), s)
    result["tasks"].setdefault(name, {}).update(project(costs, summary, runs))
    print(f"{name}: {len(methods)} methods timed in {steps}-step chunks, {time.perf_counter() - t0:.0f} s",
          flush=True)
    table = _write(result, args.out, name_out)  # after each task: a run cut short keeps what it measured
  print(table)
  return result


def reproject(result: dict[str, Any], found: dict[str, dict[str, list[dict]]], s0: R.Settings, suite: str,
              out: str, name_out: str) -> str:
  """Every stored (task, method)'s measured costs projected again (``project``) onto the suite's finished
  runs as they are now; a task or method without finished runs any more is dropped."""
  tasks = {}
  for name, methods in result["tasks"].items():
    runs = found.get(name, {})
    if "adam" not in runs:
      continue
    s = R.settings_for(suite, name, s0)
    costs = {m: c for m, c in methods.items() if m in runs}
    tasks[name] = project(costs, R.summarise_task(runs, R._spec_for(name, s), s), runs)
  result["tasks"] = tasks
  return _write(result, out, name_out)


def _write(result: dict[str, Any], out: str, name_out: str) -> str:
  order = list(R.SUITES.get(result.get("suite", "full"), (None, []))[1]) + ["digits"]
  result["tasks"] = dict(sorted(result["tasks"].items(),
                                key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
  table = format_table(result)
  R.write_results(out, name_out, result, table)
  return table


if __name__ == "__main__":
  main()
