"""Neural-graph building: time and size for the models ``nino()`` covers, traced from the forward pass.

    python -m benchmarks.graph_build           # all models (ResNet-18 at full width included)
    python -m benchmarks.graph_build --quick   # the small ones

For each model: parameters, graph nodes and edges, edge slots, the trace (``graph_trace.trace_graph``) and
the whole ``nino()`` init (trace, Laplacian positional encoding), each in seconds (after one warm-up trace:
the first trace in a process also compiles the small host operations it uses, about a second) and as a
multiple of one jitted Adam training step of that model (batch 64, compiled, measured in the same process
right before, the median of 5), so a reader can see what one init costs next to training. Building happens
once per run, at ``tx.init``. Outputs ``benchmarks/results/graph_build.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_nowcast as onc
from optax_nowcast import graph_trace
from optax_nowcast.tasks import GPT, NNXTutorialCNN, ResNet, ScanTransformer, ViT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linen(model, x, batch_stats: bool = False):
  variables = model.init(jax.random.PRNGKey(0), x)
  if batch_stats:
    stats = variables["batch_stats"]
    return (lambda p, x_: model.apply({"params": p, "batch_stats": stats}, x_)), variables["params"]
  return model.apply, variables


def models(quick: bool) -> dict[str, tuple[Callable[..., Any], Any, Any, Any]]:
  """name -> (apply_fn, params, an example batch of one, a training batch of 64)."""
  img = jnp.zeros((1, 32, 32, 3))
  out = {}
  m = NNXTutorialCNN(rngs=nnx.Rngs(0))
  out["NNX tutorial CNN (MNIST, BatchNorm)"] = (graph_trace.nnx_apply(m), nnx.state(m, nnx.Param),
                                                jnp.zeros((1, 28, 28, 1)), jnp.zeros((64, 28, 28, 1)))
  if not quick:
    fn, p = _linen(ResNet(width=64), img, batch_stats=True)
    out["ResNet-18 (BatchNorm, CIFAR)"] = (fn, p, img, jnp.zeros((64, 32, 32, 3)))
  fn, p = _linen(ResNet(width=8, blocks=(1, 1, 1), norm="group"), img)
  out["ResNet-8 (GroupNorm; A-C10-ResNet8)"] = (fn, p, img, jnp.zeros((64, 32, 32, 3)))
  fn, p = _linen(ViT(dim=32, depth=3, num_heads=4), img)
  out["ViT 3x32 (A-C10-ViT32)"] = (fn, p, img, jnp.zeros((64, 32, 32, 3)))
  if not quick:
    fn, p = _linen(ViT(dim=192, depth=6, num_heads=3, mlp_ratio=4), img)
    out["ViT 6x192 (CIFAR)"] = (fn, p, img, jnp.zeros((64, 32, 32, 3)))
  tok = jnp.zeros((1, 64), jnp.int32)
  fn, p = _linen(ScanTransformer(vocab_size=65, block_size=64, dim=32, num_heads=4, num_layers=4), tok)
  out["nn.scan transformer 4x32"] = (fn, p, tok, jnp.zeros((64, 64), jnp.int32))
  fn, p = _linen(GPT(65, 64, 3, 24, 3), tok)
  out["GPT 3x24 (LM-3-24)"] = (fn, p, tok, jnp.zeros((64, 64), jnp.int32))
  return out


def _step_time(fn, params, batch, repeats: int = 5) -> float:
  tx = optax.adam(1e-3)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda p_: jnp.mean(jnp.asarray(fn(p_, batch), jnp.float32) ** 2))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, s = step(params, tx.init(params))
  jax.block_until_ready(p)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    p, s = step(p, s)
    jax.block_until_ready(p)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def measure(quick: bool) -> list[dict[str, Any]]:
  rows = []
  # Warm-up: the first init in a process imports scipy's eigensolver and compiles JAX's host ops.
  tiny = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  onc.predictors.nino(apply_fn=lambda p, x: x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"],
                      example_input=jnp.zeros((1, 2))).init(tiny)
  for name, (fn, params, x, batch) in models(quick).items():
    step = _step_time(fn, params, batch)
    graph_trace.trace_graph(fn, params, x)  # warm-up: JAX compiles the host ops the trace uses once
    t = time.perf_counter()
    g = graph_trace.trace_graph(fn, params, x)
    trace = time.perf_counter() - t
    pred = onc.predictors.nino(apply_fn=fn, example_input=x)  # reads the weights: not part of init
    t = time.perf_counter()
    pred.init(params)
    init = time.perf_counter() - t
    rows.append({"model": name, "params": int(sum(v.size for v in jax.tree.leaves(params))),
                 "nodes": g.num_nodes, "edges": g.num_edges, "slots": g.num_slots, "trace_s": trace,
                 "nino_init_s": init, "adam_step_s": step, "trace_steps": trace / step,
                 "init_steps": init / step})
    print(f"{name}: {rows[-1]}", flush=True)
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  lines = ["Neural graphs traced from the forward pass (`python -m benchmarks.graph_build`): size, and the "
           "time of the trace and of the whole `nino()` init (trace + Laplacian PE), in seconds and in Adam "
           "steps of that model (batch 64, measured side by side in one process, this machine's CPU).", "",
           "| model | params | nodes | edges | slots | trace (s) | nino init (s) | trace / Adam step | "
           "init / Adam step |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['params']:,} | {r['nodes']:,} | {r['edges']:,} | {r['slots']} | "
                 f"{r['trace_s']:.2f} | {r['nino_init_s']:.2f} | {r['trace_steps']:.1f} | "
                 f"{r['init_steps']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.graph_build", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="the small models only")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  rows = measure(args.quick)
  name = "graph_build_quick" if args.quick else "graph_build"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump({"backend": jax.default_backend(), "rows": rows}, f, indent=1)
  with open(os.path.join(args.out, name + ".md"), "w") as f:
    f.write(format_table(rows))
  print(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
