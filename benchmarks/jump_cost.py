"""What one jump costs next to training: NiNo on wide input layers, with and without ``max_fan_in``.

    python -m benchmarks.jump_cost           # the 784-input MLPs of the generalization suite
    python -m benchmarks.jump_cost --quick   # digits' 64-input MLP (seconds; run by the tests)

For each task's model and predictor, in one process and alternating (so both carry the same load): the
median time of one jitted jump (the predictor's ``predict`` on a ``ctx``-state history, compiled) and of 100
jitted training steps of the task's base optimizer at its batch size (a compiled ``lax.scan``), over
``--repeats`` rounds. The ratio ``jump / 100 steps`` is the result; the seconds only say where it was run.
Where the time of a NiNo jump goes: the shipped network alone on the same graph (``fused_apply``, edge
features given) is timed in the same rounds; the rest of the jump is the per-tensor scaling, gathering the
edge features from the history and scattering the prediction back.
The graph's edges (what NiNo's cost grows with: about ``7 D^2`` flops per edge on the fused weights) are
listed with it.
Outputs ``benchmarks/results/jump_cost.{json,md}`` (``jump_cost_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_nowcast as onc
from benchmarks.nino_speed import network_calls
from optax_nowcast import weights_io
from optax_nowcast.predictors.nino import load_official_weights, nino_template
from optax_nowcast.tasks import make_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")

FAN_IN = 256  # the setting measured (benchmark method ``nino-ours+fan256``)
PREDICTORS: dict[str, Callable[[], onc.Predictor]] = {
    "nino-ours": onc.predictors.nino,
    f"nino-ours, max_fan_in={FAN_IN}": lambda: onc.predictors.nino(
        fallback=onc.predictors.linefit_plus(), max_fan_in=FAN_IN, fallback_horizon=5),
    "linefit+": onc.predictors.linefit_plus,
}
# The NiNo predictors' graphs: the max_fan_in each runs with (0: the whole graph).
GRAPH_FAN_IN = {"nino-ours": 0, f"nino-ours, max_fan_in={FAN_IN}": FAN_IN}
TASKS = ["G-FM-MLP2-adam", "G-FM-MLP3-adamw-cos"]
QUICK_TASKS = ["G-digits-MLP2-adabelief"]


def _seconds(fn: Callable[[], Any]) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def measure(task_name: str, data_dir: str | None, repeats: int, ctx: int = 5) -> list[dict[str, Any]]:
  task = make_task(task_name, data_dir)
  params = task.init(jax.random.PRNGKey(0))
  opt = task.optimizer()

  @jax.jit
  def train(p, s, idx):
    def body(c, i):
      p_, s_ = c
      u, s_ = opt.update(jax.grad(task.loss)(p_, i), s_, p_)
      return (optax.apply_updates(p_, u), s_), None
    return jax.lax.scan(body, (p, s), idx)[0]

  idx = jax.random.randint(jax.random.PRNGKey(1), (100, task.spec.batch_size), 0, task.num_train)
  state = opt.init(params)
  run_100 = lambda: train(params, state, idx)  # noqa: E731
  keys = jax.random.split(jax.random.PRNGKey(2), ctx)
  history = jax.tree.map(lambda p: jnp.stack([p + 1e-3 * i + 1e-3 * jax.random.normal(k, p.shape)
                                              for i, k in enumerate(keys)]), params)
  times = jnp.arange(1.0 - ctx, 1.0)
  jumps = {}
  for name, make in PREDICTORS.items():
    pred = make()
    pstate = pred.init(params)
    f = jax.jit(lambda h, s, pred=pred: pred.predict(h, times, jnp.int32(10), s))
    jumps[name] = (lambda f=f, pstate=pstate: f(history, pstate))
    jax.block_until_ready(jumps[name]())  # compile
  graphs = {n: _graph(n, params) for n in jumps}
  networks = {n: _network_only(g) for n, g in graphs.items() if g is not None}
  for fn in networks.values():
    jax.block_until_ready(fn())  # compile
  jax.block_until_ready(run_100())
  base, per, net = [], {n: [] for n in jumps}, {n: [] for n in networks}
  for _ in range(repeats):
    base.append(_seconds(run_100))
    for n, fn in jumps.items():
      per[n].append(_seconds(fn))
      if n in networks:
        net[n].append(_seconds(networks[n]))
  t100 = statistics.median(base)
  rows = []
  for n in jumps:
    g = graphs[n]
    t = statistics.median(per[n])
    rows.append({"task": task_name, "predictor": n, "params": sum(x.size for x in jax.tree.leaves(params)),
                 "graph_edges": None if g is None else g.num_edges, "jump_s": t,
                 "network_s": statistics.median(net[n]) if n in net else None, "steps100_s": t100,
                 "ratio": t / t100})
  return rows


def _graph(name: str, params) -> onc.graphs.NeuralGraph | None:
  """The graph NiNo runs on (without the tensors ``max_fan_in`` leaves to the fallback); None: no NiNo."""
  if name not in GRAPH_FAN_IN:
    return None
  g = onc.graphs.neural_graph(params)
  if fan := GRAPH_FAN_IN[name]:
    g = g.without([i for i in g.leaf_groups() if g.fan_in(i) > fan])
  return g


def _network_only(g: onc.graphs.NeuralGraph) -> Callable[[], Any]:
  """The shipped NiNo's graph network alone on ``g`` (fused weights, one horizon), as a jump runs it."""
  variables, cfg = weights_io.resolve(None, None, None, load_official_weights, nino_template, "",
                                      default="nino")
  fused = network_calls(variables, cfg, g)["fused"]
  return lambda: fused(jnp.int32(10))


def format_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
  lines = [f"One jump against 100 training steps of the task's base optimizer at its batch size, measured "
           f"alternately in one process ({meta['repeats']} rounds, medians; {meta['machine']}, "
           f"{meta['devices']}). Ratio < 1: a jump costs less than 100 steps.", "",
           "| task | parameters | predictor | graph edges | one jump (s) | of which the graph network (s) "
           "| 100 steps (s) | jump / 100 steps |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    edges = "—" if r["graph_edges"] is None else f"{r['graph_edges']:,}"
    network = "—" if r.get("network_s") is None else f"{r['network_s']:.3f}"
    lines.append(f"| {r['task']} | {r['params']:,} | {r['predictor']} | {edges} | {r['jump_s']:.3f} | "
                 f"{network} | {r['steps100_s']:.3f} | {r['ratio']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="digits' small MLP only, 2 rounds")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
  repeats = 2 if args.quick else args.repeats
  rows = [r for t in (QUICK_TASKS if args.quick else TASKS) for r in measure(t, args.data_dir, repeats)]
  meta = {"repeats": repeats, "machine": platform.processor() or platform.machine(),
          "devices": f"{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} cores"}
  name = "jump_cost_quick" if args.quick else "jump_cost"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  table = format_table(rows, meta)
  with open(os.path.join(args.out, name + ".md"), "w") as f:
    f.write(table)
  print(table)
  return rows


if __name__ == "__main__":
  main()
