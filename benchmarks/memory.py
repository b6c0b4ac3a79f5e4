"""Memory of nowcasting: optimizer-state bytes per parameter and the compiled step's peak scratch memory.

    python -m benchmarks.memory [--task LM-3-64]

For each configuration it reports the optimizer state's bytes divided by the parameter count (plain Adam
keeps 2 float32 copies: 8 bytes per parameter) and, from XLA's ``memory_analysis`` of the jitted, donated
training step of the task (the step that can jump: both branches are compiled in), the temporary buffer
bytes -- the extra memory a step needs beyond its inputs and outputs. Writes
``benchmarks/results/memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import optax

import optax_nowcast as onc
from benchmarks.run import REPO, default_data_dir, default_nino_weights, write_results
from optax_nowcast.tasks import make_task


def configs(task) -> dict[str, optax.GradientTransformation]:
  base = task.optimizer()
  lf = onc.predictors.linefit()
  out = {
      "adam": base,
      "adam + nowcast(linefit), ctx 5": optax.chain(base, onc.nowcast(lf, interval=200, ctx=5)),
      "adam + nowcast(linefit), ctx 5, bf16 history": optax.chain(
          base, onc.nowcast(lf, interval=200, ctx=5, history_dtype=jnp.bfloat16)),
      "adam + nowcast(linefit), ctx 3": optax.chain(base, onc.nowcast(lf, interval=200, ctx=3)),
      "adam + nowcast(linefit), ctx 5, host-memory history": optax.chain(
          base, onc.nowcast(lf, interval=200, ctx=5, history_memory="host")),
  }
  out["adam + farcast(lfd2)"] = optax.chain(
      base, onc.farcast(onc.predictors.lfd2(), n=5, unit=200, horizon=5))
  out["adam + nowcast(wnn+), ctx 5"] = optax.chain(
      base, onc.nowcast(onc.predictors.wnn_plus(), interval=200, ctx=5, horizon=5))
  weights = default_nino_weights()
  if weights is not None:
    out["adam + nowcast(nino), ctx 5"] = optax.chain(
        base, onc.nowcast(onc.predictors.nino(weights), interval=200, ctx=5, horizon=5))
    out["adam + nowcast(nino, module subgraphs), ctx 5"] = optax.chain(
        base, onc.nowcast(onc.predictors.nino(weights, subgraphs="module"), interval=200, ctx=5, horizon=5))
  return out


def measure(task, tx) -> dict:
  params = task.init(jax.random.PRNGKey(0))
  n = sum(x.size for x in jax.tree.leaves(params))
  state = tx.init(params)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  on_device = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)
                  if x.sharding.memory_kind not in ("pinned_host", "unpinned_host"))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s, idx):
    g = jax.grad(task.loss)(p, idx)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  idx = jnp.asarray(task.batch_indices(0, 0, 1)[0])
  mem = step.lower(params, state, idx).compile().memory_analysis()
  return {"params": int(n), "state_bytes": int(state_bytes), "state_bytes_per_param": state_bytes / n,
          "device_state_bytes_per_param": on_device / n,
          "step_temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)),
          "step_argument_bytes": int(getattr(mem, "argument_size_in_bytes", -1))}


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="LM-3-64")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  task = make_task(args.task, default_data_dir())
  rows = {}
  for name, tx in configs(task).items():
    rows[name] = r = measure(task, tx)
    print(f"{name}: {r['state_bytes_per_param']:.1f} state bytes / param, "
          f"{r['step_temp_bytes'] / 2**20:.2f} MB step scratch", flush=True)
  base = rows["adam"]
  lines = [f"Task {args.task} ({base['params']:,} parameters), batch {task.spec.batch_size}; "
           f"backend {jax.default_backend()}.", "",
           "| configuration | state bytes / param | of which on the device | state vs Adam "
           "| step scratch (MB) | scratch vs Adam |",
           "|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | {r['state_bytes_per_param']:.1f} | {r['device_state_bytes_per_param']:.1f} | "
                 f"{r['state_bytes'] / base['state_bytes']:.2f}x | {r['step_temp_bytes'] / 2**20:.2f} | "
                 f"{r['step_temp_bytes'] / base['step_temp_bytes']:.2f}x |")
  table = "\n".join(lines)
  payload = {"task": args.task, "rows": rows, "backend": jax.default_backend()}
  write_results(args.out, "memory", payload, table)
  print(table)
  return rows


if __name__ == "__main__":
  main()
