"""Time of one NiNo prediction (jitted), against the official PyTorch model's figures.

    python -m benchmarks.nino_speed [--weights PATH] [--repeats 30] [--quick]

For the FM/16 and C10/32 CNNs (and the LM-3-64 transformer) it builds the neural graph, runs the jitted
``predict`` of ``predictors.nino`` on a 5-state history (scaling, edge features, the GNN, the scatter back
and the unscaling: everything a jump needs) and reports the median wall time. The official model's times on
this kind of CPU (METHODS.md: one thread, PyTorch) are 18-21 ms for FM/16 and ~60 ms for C10/32. The
graph network alone is also timed as written (``NiNoGNN.apply``) and on the fused weights a jump uses
(``fuse_weights``), alternating in one process. Writes ``benchmarks/results/nino_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.run import REPO, default_nino_weights, write_results
from optax_nowcast.graphs import neural_graph
from optax_nowcast.predictors import nino
from optax_nowcast.predictors.nino import (
  NiNoGNN,
  fuse_weights,
  fused_apply,
  load_official_weights,
  make_graphs_tuple,
)
from optax_nowcast.tasks import CNN, GPT

OFFICIAL_MS = {"FM-16": "18-21", "C10-32": "~60"}


def time_prediction(params, weights: str, repeats: int) -> dict:
  pred = nino(weights)
  t0 = time.perf_counter()
  pred.init(params)
  build_s = time.perf_counter() - t0
  keys = jax.random.split(jax.random.PRNGKey(1), 5)
  history = jax.tree.map(lambda p: jnp.stack([p + 0.01 * i * jax.random.normal(k, p.shape)
                                              for i, k in enumerate(keys)]), params)
  fn = jax.jit(pred.predict)
  times = jnp.arange(-4.0, 1.0)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(history, times, jnp.int32(5), ()))
  compile_s = time.perf_counter() - t0
  ms = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(history, times, jnp.int32(1 + i % 40), ()))
    ms.append(1e3 * (time.perf_counter() - t0))
  g = neural_graph(params)
  return {"params": int(sum(x.size for x in jax.tree.leaves(params))), "nodes": g.num_nodes,
          "edges": g.num_edges, "median_ms": float(np.median(ms)), "min_ms": float(np.min(ms)),
          "graph_build_s": build_s, "compile_s": compile_s, "repeats": repeats}


def network_calls(variables, cfg: dict, g) -> dict[str, Callable[[jax.Array], jax.Array]]:
  """NiNo's graph network alone on the graph ``g`` (random edge features, horizon ``k``), as written
  (``NiNoGNN.apply``) and on the fused weights that ``nino()`` jumps with (``fused_apply``): ``k -> out``."""
  model = NiNoGNN(**{k: v for k, v in cfg.items() if k not in ("lpe", "node_features")})
  fused = fuse_weights(model, variables)
  rng = np.random.default_rng(0)
  narrow = jnp.asarray(rng.normal(size=(g.num_edges, g.num_slots * model.ctx)), jnp.float32)
  wide = jnp.pad(narrow, ((0, 0), (0, model.slots * model.ctx - narrow.shape[1])))
  feat = jnp.asarray(rng.normal(size=(g.num_nodes, cfg["lpe"])), jnp.float32)
  # The graph behind an optimization barrier, as in ``nino()`` (XLA would otherwise fold the (E, D) arrays
  # that depend on the graph alone into constants of the executable).
  graph = lambda x: jax.lax.optimization_barrier(make_graphs_tuple(g, x, feat))  # noqa: E731
  as_written = jax.jit(lambda w, x, k: model.apply(w, graph(x), k))
  on_fused = jax.jit(lambda w, x, k: fused_apply(w, graph(x), k, layers=model.layers, slots=model.slots,
                                                   horizons=model.horizons))
  return {"as_written": lambda k: as_written(variables, wide, k),
          "fused": lambda k: on_fused(fused, narrow, k)}


def time_gnn(params, weights: str, repeats: int) -> dict:
  """The graph network alone, as written and fused (``network_calls``), alternating in one process."""
  runs = network_calls(*load_official_weights(weights), neural_graph(params))
  ms: dict[str, list[float]] = {name: [] for name in runs}
  for fn in runs.values():  # compile
    jax.block_until_ready(fn(jnp.int32(5)))
  for i in range(repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(jnp.int32(1 + i % 40)))
      ms[name].append(1e3 * (time.perf_counter() - t0))
  return {f"gnn_{name}_ms": float(np.median(v)) for name, v in ms.items()}


def _x(v):
  return "—" if v is None else f"{v:.1f}x"


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.nino_speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default=default_nino_weights(), help="official nino_no_posw .pt or .npz")
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--quick", action="store_true", help="FM/16 only, 5 repeats")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  if args.weights is None:
    parser.error("no --weights given, and neither $OPTAX_NOWCAST_NINO_WEIGHTS nor "
                 "$OPTAX_NOWCAST_OFFICIAL_DIR names the official checkpoint")
  models = {
      "FM-16": CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
      "C10-32": CNN((32, 64, 64)).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))),
      "LM-3-64": GPT(65, 64, 3, 64, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32)),
  }
  if args.quick:
    models = {"FM-16": models["FM-16"]}
  repeats = 5 if args.quick else args.repeats
  rows = {name: {**time_prediction(p, args.weights, repeats), **time_gnn(p, args.weights, repeats)}
          for name, p in models.items()}
  lines = ["| model | params | nodes | edges | ours: median ms (min) | official PyTorch (METHODS.md) "
           "| speed-up | compile (s) | graph network as written / fused (ms, side by side) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    off = OFFICIAL_MS.get(name)
    ref = {"18-21": 18.0, "~60": 60.0}.get(off)  # the low end of the official figure
    r["official_ms"] = off
    r["speedup_vs_official_low"] = ref / r["median_ms"] if ref else None
    lines.append(f"| {name} | {r['params']:,} | {r['nodes']} | {r['edges']:,} | {r['median_ms']:.2f} "
                 f"({r['min_ms']:.2f}) | {off or '—'} | "
                 f"{_x(r['speedup_vs_official_low'])} | {r['compile_s']:.1f} | "
                 f"{r['gnn_as_written_ms']:.2f} / {r['gnn_fused_ms']:.2f} "
                 f"({r['gnn_as_written_ms'] / r['gnn_fused_ms']:.1f}x) |")
  table = "\n".join(lines)
  if not args.quick:
    write_results(args.out, "nino_speed",
                  {"rows": rows, "backend": jax.default_backend(), "devices": str(jax.devices())}, table)
  print(table)
  return rows


if __name__ == "__main__":
  main()
