"""Time of one WNN / WNN+ prediction, one call per parameter tensor against cache-sized chunks.

    python -m benchmarks.chunk_speed            # digits MLP, FM-16, C10-32, LM-3-64; 15 repeats
    python -m benchmarks.chunk_speed --quick    # digits MLP only, 3 repeats, no files written

WNN and WNN+ run the same small MLP on every parameter element. Called once per parameter tensor
(``chunk=None``), the ``(n, hidden)`` activations of a large tensor leave the CPU's cache between layers;
:func:`optax_nowcast.predictors.base.map_rows` runs all tensors' elements in chunks instead
(``chunk="auto"``: 2,048 rows for WNN, 1,024 for WNN+ on CPU). For each model this times the jitted
``predict`` (the shipped weights, a 5-state history) both ways, alternating calls, and reports the medians
and the speed-up. Writes ``benchmarks/results/chunk_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.run import REPO, write_results
from optax_nowcast import predictors
from optax_nowcast.tasks import CNN, GPT, MLP


def models() -> dict[str, Any]:
  return {
      "digits MLP": MLP((128, 128), 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 64))),
      "FM-16": CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))),
      "C10-32": CNN((32, 64, 64)).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))),
      "LM-3-64": GPT(65, 64, 3, 64, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32)),
  }


def time_pair(params, make, repeats: int) -> dict[str, float]:
  """Median ms of ``predict``, ``chunk=None`` (``whole``: per tensor) and ``"auto"``, called in turn."""
  keys = jax.random.split(jax.random.PRNGKey(1), 5)
  history = jax.tree.map(lambda p: jnp.stack([p + 0.01 * i * jax.random.normal(k, p.shape)
                                              for i, k in enumerate(keys)]), params)
  times = jnp.arange(-4.0, 1.0)
  fns = {}
  for name, chunk in (("whole", None), ("chunked", "auto")):
    pred = make(chunk=chunk)
    state = pred.init(params)
    fns[name] = jax.jit(lambda h, k, pred=pred, state=state: pred.predict(h, times, k, state)[0])
    jax.block_until_ready(fns[name](history, jnp.int32(5)))
  ms: dict[str, list[float]] = {name: [] for name in fns}
  outs = {}
  for i in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      outs[name] = jax.block_until_ready(fn(history, jnp.int32(1 + i % 5)))
      ms[name].append(1e3 * (time.perf_counter() - t0))
  diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for a, b in zip(jax.tree.leaves(outs["whole"]), jax.tree.leaves(outs["chunked"]), strict=True))
  whole, chunked = float(np.median(ms["whole"])), float(np.median(ms["chunked"]))
  return {"whole_ms": whole, "chunked_ms": chunked, "speedup": whole / chunked, "max_abs_diff": diff}


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--quick", action="store_true", help="digits MLP only, 3 repeats, no files")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  todo = models()
  if args.quick:
    todo = {"digits MLP": todo["digits MLP"]}
  repeats = 3 if args.quick else args.repeats
  makers = {"wnn": lambda chunk: predictors.wnn(chunk=chunk),
            "wnn+": lambda chunk: predictors.wnn_plus(chunk=chunk)}
  rows: dict[str, Any] = {}
  lines = [f"One jitted prediction, shipped weights, 5-state history; median of {repeats} alternating calls "
           f"(`python -m benchmarks.chunk_speed`, backend {jax.default_backend()}, {os.cpu_count()} cores).",
           "", "| model | params | predictor | per tensor (ms) | chunked (ms) | speed-up | max abs diff |",
           "|---|---|---|---|---|---|---|"]
  for model, params in todo.items():
    n = int(sum(x.size for x in jax.tree.leaves(params)))
    for name, make in makers.items():
      r = {"params": n, **time_pair(params, make, repeats)}
      rows[f"{model} / {name}"] = r
      lines.append(f"| {model} | {n:,} | {name} | {r['whole_ms']:.1f} | {r['chunked_ms']:.1f} "
                   f"| {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")
  table = "\n".join(lines)
  if not args.quick:
    write_results(args.out, "chunk_speed", {"rows": rows, "repeats": repeats,
                                            "backend": jax.default_backend(), "cpu_count": os.cpu_count()},
                  table)
  print(table)
  return rows


if __name__ == "__main__":
  main()
