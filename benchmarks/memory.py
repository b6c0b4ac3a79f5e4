"""Memory of nowcasting: optimizer-state bytes per parameter and the compiled step's peak scratch memory.

    python -m benchmarks.memory [--task LM-3-64]
    python -m benchmarks.memory --sweep [--quick]   # MLPs of 1M-50M parameters: peak step memory

``--sweep`` compiles the jitted, donated train step of an MLP 64-w-w-10 (the sizes of
``benchmarks.overhead``) for Adam and for Adam + nowcast(linefit, ctx 3) with a float32, a bfloat16 and a
host-memory history, the three programs of each: the full step (recording and jump behind ``lax.cond``),
the record step (``nowcast_phase="record"``: no jump compiled) and the plain step
(``nowcast_phase="plain"``). Its peak device memory is read from XLA's ``memory_analysis``:
the donated inputs that live on the device (parameters and optimizer state, aliased with the outputs)
plus the temporary buffers. Writes ``benchmarks/results/memory_sweep.{json,md,png}``.

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
from benchmarks.overhead import WIDTHS
from benchmarks.run import REPO, default_data_dir, default_nino_weights, write_results
from optax_nowcast.tasks import MLP, make_task


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


def _device_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
                 if x.sharding.memory_kind not in ("pinned_host", "unpinned_host")))


def sweep_size(size: str, batch: int = 128) -> dict:
  """Peak device memory of each train-step program at one size (compiled, not run)."""
  width = WIDTHS[size]
  model = MLP((width, width))
  x, y = jnp.ones((batch, 64)), jnp.zeros((batch,), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x[:1])
  n = sum(p.size for p in jax.tree.leaves(params))
  lf = onc.predictors.linefit()
  histories = {"f32": {}, "bf16": {"history_dtype": jnp.bfloat16}, "host": {"history_memory": "host"}}
  programs = [("adam", optax.adam(1e-4), None)]
  for hname, kw in histories.items():
    tx = optax.chain(optax.adam(1e-4), onc.nowcast(lf, interval=10, ctx=3, **kw))
    programs += [(f"{hname} history, {phase} step", tx, phase) for phase in ("full", "record", "plain")]
  rows = {}
  for name, tx, phase in programs:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, tx=tx, phase=phase):
      def loss_fn(q):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(q, x), y).mean()
      g = jax.grad(loss_fn)(p)
      u, s = tx.update(g, s, p, **({"nowcast_phase": phase} if phase else {}))
      return optax.apply_updates(p, u), s

    state = tx.init(params)
    mem = step.lower(params, state).compile().memory_analysis()
    resident = _device_bytes(params) + _device_bytes(state)
    rows[name] = {"resident_bytes": resident, "temp_bytes": int(mem.temp_size_in_bytes),
                  "peak_bytes": resident + int(mem.temp_size_in_bytes)}
    del state
  adam = rows["adam"]
  history_bytes = {"adam": 0, "f32": 3 * 4 * n, "bf16": 3 * 2 * n, "host": 0}
  for name, r in rows.items():
    r["peak_vs_adam"] = r["peak_bytes"] / adam["peak_bytes"]
    # Adam's peak plus the history's ctx copies on the device, nothing else.
    r["expected_vs_adam"] = (adam["peak_bytes"] + history_bytes[name.split()[0]]) / adam["peak_bytes"]
  return {"size": size, "n_params": int(n), "rows": rows}


def sweep_markdown(res: list[dict]) -> str:
  lines = ["Peak device memory of one train step (jitted, donated), MLP 64-w-w-10, batch 128, Adam + "
           "nowcast(linefit, ctx 3): resident parameters and optimizer state on the device plus XLA's "
           f"temporary buffers (`memory_analysis`); backend {jax.default_backend()}. *Expected*: Adam's peak "
           "plus the history's ctx copies of the parameters in its dtype (3 x 4 bytes per parameter in "
           "float32, 3 x 2 in bfloat16, none on the device in host memory) and nothing else. Regenerate: "
           "`python -m benchmarks.memory --sweep`.", "",
           "| parameters | program | resident (MB) | temp (MB) | peak (MB) | peak / Adam | expected / Adam |",
           "|---|---|---|---|---|---|---|"]
  for r in res:
    for name, m in r["rows"].items():
      lines.append(f"| {r['n_params'] / 1e6:.1f}M | {name} | {m['resident_bytes'] / 2**20:.1f} | "
                   f"{m['temp_bytes'] / 2**20:.1f} | {m['peak_bytes'] / 2**20:.1f} | "
                   f"{m['peak_vs_adam']:.3f} | {m['expected_vs_adam']:.3f} |")
  return "\n".join(lines)


def sweep_plot(res: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  sizes = [r["n_params"] / 1e6 for r in res]
  for name in res[0]["rows"]:
    ax.plot(sizes, [r["rows"][name]["peak_vs_adam"] for r in res], "s--" if "full" in name else "o-",
            label=name, lw=1)
  ax.set_xscale("log")
  ax.set_xlabel("parameters (millions)")
  ax.set_ylabel("peak step memory / Adam's")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="LM-3-64")
  parser.add_argument("--sweep", action="store_true", help="peak step memory of MLPs of 1M-50M parameters")
  parser.add_argument("--quick", action="store_true", help="with --sweep: 1M and 2M only")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  if args.sweep:
    res = []
    for size in (["1M", "2M"] if args.quick else list(WIDTHS)):
      res.append(sweep_size(size))
      print(size, {k: round(v["peak_vs_adam"], 3) for k, v in res[-1]["rows"].items()}, flush=True)
    table = sweep_markdown(res)
    name = "memory_sweep_quick" if args.quick else "memory_sweep"
    write_results(args.out, name, {"sizes": res, "backend": jax.default_backend()}, table)
    sweep_plot(res, os.path.join(args.out, f"{name}.png"))
    print(table)
    return res
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
