"""Per-step cost of ``nowcast`` against the base optimizer, over model sizes, side by side in one process.

For each size (an MLP 64-w-w-10: 1M, 2M, 4M, 16M and 50M parameters) Adam and Adam + nowcast(linefit)
train on the same fixed batch with a jitted, donated step, in alternating blocks so that machine noise
hits every method alike; each step's time is divided by Adam's median step of the same round of blocks
and the ratio reported is the median of those. The nowcast variants:

* ``full``: every update is the full step (``lax.cond`` around the recording and the jump);
* ``phased``: the training loop passes each step the phase :func:`optax_nowcast.nowcast_phase` gives it
  (``nowcast_phase="plain"``: a compiled step that leaves the history alone; ``"record"``: one that
  records and cannot jump; ``"full"`` at the jumps);
* ``phased, bf16`` / ``phased, host``: the same with a bfloat16 history / the history in host memory;
* ``adam, again``: a second, identical Adam run, a control: its ratio is the measurement's noise.

Each step is timed on its own (blocked on its loss). Reported per method: the median time of the
non-recording steps, of the recording steps and of the jump steps, each as a ratio to Adam's median
step. ``interval`` is short (10, ctx 3) so that every kind of step occurs often; the cost of a
non-recording step does not depend on it.

    python -m benchmarks.overhead            # 1M-50M parameters, ~15 min on 2 CPU cores
    python -m benchmarks.overhead --quick    # 1M and 2M, fewer steps (CI-sized, ~1 min)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_nowcast as onc
from optax_nowcast.tasks import MLP

RESULTS = os.path.join(os.path.dirname(__file__), "results")
INTERVAL, CTX = 10, 3
WIDTHS = {"1M": 1000, "2M": 1400, "4M": 2000, "16M": 4000, "50M": 7000}
BIG = ("16M", "50M")  # sizes at which only adam, full and phased run (memory and time on 2 cores)


def methods(size: str) -> dict[str, tuple[optax.GradientTransformation, bool]]:
  """``name -> (tx, runs each step in its phase)``."""
  lf = onc.predictors.linefit()
  nc = functools.partial(onc.nowcast, lf, interval=INTERVAL, ctx=CTX)
  out = {"adam": (optax.adam(1e-4), False),
         "adam, again": (optax.adam(1e-4), False),  # a control: Adam against itself (the noise floor)
         "full": (optax.chain(optax.adam(1e-4), nc()), False),
         "phased": (optax.chain(optax.adam(1e-4), nc()), True)}
  if size not in BIG:
    out["phased, bf16"] = (optax.chain(optax.adam(1e-4), nc(history_dtype=jnp.bfloat16)), True)
    out["phased, host"] = (optax.chain(optax.adam(1e-4), nc(history_memory="host")), True)
  return out


def step_kind(step: int) -> str:
  """``plain``, ``record`` or ``jump`` for the update call with ``state.count == step``."""
  phase = onc.nowcast_phase(step, interval=INTERVAL, ctx=CTX)
  return "jump" if phase == "full" else phase


def run_size(size: str, periods: int, batch: int = 128, seed: int = 0) -> dict:
  width = WIDTHS[size]
  model = MLP((width, width))
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch, 64))
  y = jax.random.randint(jax.random.PRNGKey(seed + 1), (batch,), 0, 10)
  params0 = model.init(jax.random.PRNGKey(seed + 2), x[:1])
  n_params = sum(p.size for p in jax.tree.leaves(params0))

  def make_step(tx):
    @functools.partial(jax.jit, donate_argnums=(0, 1), static_argnames="phase")
    def step(params, opt_state, phase=None):
      def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      kw = {"nowcast_phase": phase} if phase else {}
      updates, opt_state = tx.update(grads, opt_state, params, **kw)
      return optax.apply_updates(params, updates), opt_state, loss
    return step

  runs = {}
  for name, (tx, marks) in methods(size).items():
    step = make_step(tx)
    params = jax.tree.map(jnp.array, params0)
    state = tx.init(params)
    # Compile and warm every program on a throwaway copy, through one period and a jump (a program can be
    # compiled again for the signature of its own outputs, e.g. host-memory leaves).
    p, s = jax.tree.map(jnp.array, params), jax.tree.map(jnp.array, state)
    for i in range(INTERVAL * CTX + 2):
      phase = onc.nowcast_phase(i, interval=INTERVAL, ctx=CTX) if marks else None
      p, s, loss = step(p, s, phase=phase)
    jax.block_until_ready(loss)
    runs[name] = {"step": step, "marks": marks, "params": params, "state": state, "times": [], "rounds": [],
                  "done": 0}
  steps = periods * INTERVAL * CTX + 1
  block = INTERVAL * CTX
  order, rnd = list(runs), 0
  while any(r["done"] < steps for r in runs.values()):
    for name in order:
      r = runs[name]
      for _ in range(min(block, steps - r["done"])):
        phase = onc.nowcast_phase(r["done"], interval=INTERVAL, ctx=CTX) if r["marks"] else None
        t0 = time.perf_counter()
        r["params"], r["state"], loss = r["step"](r["params"], r["state"], phase=phase)
        loss.block_until_ready()
        r["times"].append(time.perf_counter() - t0)
        r["rounds"].append(rnd)
        r["done"] += 1
    order.reverse()
    rnd += 1
  kinds = np.array([step_kind(s) for s in range(steps)])
  kinds[0] = "first"  # step 0 follows compilation in its block's first call: left out
  adam_t, rounds = np.asarray(runs["adam"]["times"]), np.asarray(runs["adam"]["rounds"])
  base = float(np.median(adam_t[kinds != "first"]))
  # Adam's median step in each round (a block of each method): ratios are paired round by round, so
  # that load drifting over the minutes of a run cancels.
  adam_round = {i: np.median(adam_t[(rounds == i) & (kinds != "first")]) for i in np.unique(rounds)}
  out = {"size": size, "width": width, "n_params": int(n_params), "steps": steps, "adam_ms": base * 1e3,
         "methods": {}}
  for name, r in runs.items():
    t, rr = np.asarray(r["times"]), np.asarray(r["rounds"])
    row = {}
    for kind in ("plain", "record", "jump"):
      sel = kinds == kind
      row[f"{kind}_ms"] = float(np.median(t[sel]) * 1e3)
      row[f"{kind}_ratio"] = float(np.median(t[sel] / np.array([adam_round[i] for i in rr[sel]])))
    nc = onc.find_nowcast_state(r["state"])
    row["n_jumps"] = int(nc.n_jumps) if nc is not None else 0
    row["n_missed"] = int(nc.n_missed) if nc is not None else 0
    out["methods"][name] = row
  return out


def markdown(res: dict) -> str:
  env = res["environment"]
  lines = [
      f"MLP 64-w-w-10, batch {res['batch']}, jitted + donated step, Adam + nowcast(linefit, "
      f"interval={INTERVAL}, ctx={CTX}); median step time as a ratio to Adam's, by kind of step "
      f"(non-recording, recording, jump); {res['periods']} periods of {INTERVAL * CTX} steps per method "
      f"(half at 16M and 50M) in alternating blocks. Backend {env['backend']} ({env['cpu_count']} cores), "
      f"jax {env['jax']}. Regenerate: `python -m benchmarks.overhead`.",
      "",
      "| parameters | Adam step (ms) | method | non-recording step | recording step | jump step | jumps |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in res["sizes"]:
    for name, m in r["methods"].items():
      if name == "adam":
        continue
      lines.append(f"| {r['n_params'] / 1e6:.1f}M | {r['adam_ms']:.1f} | {name} | {m['plain_ratio']:.3f} | "
                   f"{m['record_ratio']:.3f} | {m['jump_ratio']:.2f} | {m['n_jumps']} |")
  lines += ["", "`full`: every step runs the program with the recording and the jump behind `lax.cond`. "
            "`phased`: the loop passes each step its `onc.nowcast_phase(step, ...)`: `\"plain\"` (a program "
            "that leaves the history alone), `\"record\"` (records, no jump compiled) or `\"full\"` at the "
            "jumps."]
  return "\n".join(lines)


def plot(res: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  sizes = [r["n_params"] / 1e6 for r in res["sizes"]]
  names = [n for n in res["sizes"][0]["methods"] if n != "adam"]
  for name in names:
    for ax, kind in zip(axes, ("plain", "record"), strict=True):
      pts = [(s, r["methods"][name][f"{kind}_ratio"]) for s, r in zip(sizes, res["sizes"], strict=True)
             if name in r["methods"]]
      ax.plot(*zip(*pts, strict=True), "o-", label=name)
  for ax, title, bound in zip(axes, ("non-recording step", "recording step"), (1.02, 1.10), strict=True):
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(bound, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("time / Adam's step")
    ax.set_title(title)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="1M and 2M parameters, 2 periods (CI)")
  parser.add_argument("--sizes", default=",".join(WIDTHS), help=f"subset of {','.join(WIDTHS)}")
  parser.add_argument("--periods", type=int, default=6, help="periods (of interval * ctx steps) per method")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
  sizes = ["1M", "2M"] if args.quick else [s for s in args.sizes.split(",") if s]
  for s in sizes:
    if s not in WIDTHS:
      raise SystemExit(f"--sizes: unknown size {s!r}; choose from {', '.join(WIDTHS)}")
  periods = 2 if args.quick else args.periods
  res = {"batch": 128, "periods": periods, "sizes": [],
         "environment": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                         "jax": jax.__version__, "optax": optax.__version__, "cpu_count": os.cpu_count(),
                         "machine": platform.machine()}}
  for s in sizes:
    res["sizes"].append(run_size(s, periods if s not in BIG else max(2, periods // 2)))
    print(json.dumps({k: v for k, v in res["sizes"][-1].items()}, indent=None), flush=True)
  name = "overhead_quick" if args.quick else "overhead"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump(res, f, indent=1)
  table = markdown(res)
  with open(os.path.join(args.out, f"{name}.md"), "w") as f:
    f.write(table + "\n")
  plot(res, os.path.join(args.out, f"{name}.png"))
  print(table)
  return res


if __name__ == "__main__":
  main()
