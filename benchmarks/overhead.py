"""Per-step overhead of ``nowcast`` on a jitted, donated training step of a ~1.1M-parameter MLP.

Adam and Adam + nowcast(linefit, interval=200, ctx=5) train the same MLP (64-1024-1024-10) on sklearn
digits minibatches (batch 128) in the same process. Steps are timed one by one (each blocked on its
loss) in alternating blocks, so machine noise hits both alike. Reported: median and mean time of
non-jump steps and their ratio to Adam (the target is < 1.02), the latency of the recording and jump
steps, and the optimizer state's bytes.

    python -m benchmarks.overhead            # 3 jumps per method, ~1 min on 2 CPU cores
    python -m benchmarks.overhead --quick    # 1 jump, for CI
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
from optax_nowcast.tasks import MLP, load_digits_split

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _state_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def run(steps: int, block: int, interval: int = 200, ctx: int = 5, batch: int = 128, seed: int = 0):
  data = load_digits_split()
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  model = MLP((1024, 1024))
  params0 = model.init(jax.random.PRNGKey(seed), x[:1])
  n_params = sum(p.size for p in jax.tree.leaves(params0))
  methods = {
      "adam": optax.adam(1e-3),
      "adam+nowcast(linefit)": optax.chain(
          optax.adam(1e-3), onc.nowcast(onc.predictors.linefit(), interval=interval, ctx=ctx)),
  }

  def make_step(tx):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, key):
      idx = jax.random.randint(key, (batch,), 0, x.shape[0])
      def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[idx]), y[idx]).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    return step

  runs = {}
  for name, tx in methods.items():
    params = jax.tree.map(jnp.array, params0)
    opt_state = tx.init(params)
    runs[name] = {"step": make_step(tx), "params": params, "opt_state": opt_state,
                  "state_bytes": _state_bytes(opt_state), "times": [], "done": 0}
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), steps)
  # Warm-up (compilation) on a throwaway copy so both timed runs start at step 0.
  for r in runs.values():
    p, s = jax.tree.map(jnp.array, r["params"]), jax.tree.map(jnp.array, r["opt_state"])
    jax.block_until_ready(r["step"](p, s, keys[0]))
  order = list(runs)
  while any(r["done"] < steps for r in runs.values()):
    for name in order:
      r = runs[name]
      for _ in range(min(block, steps - r["done"])):
        t0 = time.perf_counter()
        r["params"], r["opt_state"], loss = r["step"](r["params"], r["opt_state"], keys[r["done"]])
        loss.block_until_ready()
        r["times"].append(time.perf_counter() - t0)
        r["done"] += 1
    order.reverse()

  # Call s (0-based) receives the params after s steps; states are recorded at multiples of
  # `interval` in each window and the jump replaces the update at multiples of ctx * interval.
  calls = np.arange(steps)
  period = ctx * interval
  is_jump = (calls % period == 0) & (calls > 0)
  is_record = (calls % interval == 0) & (calls > 0) & ~is_jump
  plain = ~(is_jump | is_record)
  out = {"n_params": int(n_params), "steps": steps, "interval": interval, "ctx": ctx, "batch": batch,
         "methods": {}}
  for name, r in runs.items():
    t = np.asarray(r["times"]) * 1e3
    nc_state = onc.find_nowcast_state(r["opt_state"])
    out["methods"][name] = {
        "median_step_ms": float(np.median(t[plain])), "mean_step_ms": float(np.mean(t[plain])),
        "p90_step_ms": float(np.percentile(t[plain], 90)),
        "record_step_ms": float(np.median(t[is_record])) if is_record.any() else None,
        "jump_step_ms": [float(v) for v in t[is_jump]],
        "state_bytes": r["state_bytes"],
        "n_jumps": int(nc_state.n_jumps) if nc_state is not None else 0,
        "times_ms": t.tolist(),
    }
  base, nc = out["methods"]["adam"], out["methods"]["adam+nowcast(linefit)"]
  out["ratio_median_non_jump"] = nc["median_step_ms"] / base["median_step_ms"]
  out["ratio_mean_non_jump"] = nc["mean_step_ms"] / base["mean_step_ms"]
  out["ratio_total_time"] = float(np.sum(nc["times_ms"]) / np.sum(base["times_ms"]))
  out["ratio_state_bytes"] = nc["state_bytes"] / base["state_bytes"]
  out["environment"] = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                        "jax": jax.__version__, "optax": optax.__version__,
                        "cpu_count": os.cpu_count(), "machine": platform.machine()}
  return out


def markdown(res) -> str:
  base, nc = res["methods"]["adam"], res["methods"]["adam+nowcast(linefit)"]
  env = res["environment"]
  lines = [
      f"MLP 64-1024-1024-10 ({res['n_params']:,} params), batch {res['batch']}, {res['steps']} steps "
      f"per method, jitted + donated step; nowcast(linefit, interval={res['interval']}, "
      f"ctx={res['ctx']}); backend {env['backend']} ({env['device']}, {env['cpu_count']} cores)",
      "",
      "| method | median non-jump step (ms) | mean non-jump step (ms) | p90 (ms) | recording step (ms) "
      "| jump step (ms) | optimizer state (MB) |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, m in res["methods"].items():
    jump = ", ".join(f"{v:.1f}" for v in m["jump_step_ms"]) or "-"
    rec = f"{m['record_step_ms']:.2f}" if m["record_step_ms"] is not None else "-"
    lines.append(f"| {name} | {m['median_step_ms']:.3f} | {m['mean_step_ms']:.3f} | "
                 f"{m['p90_step_ms']:.3f} | {rec} | {jump} | {m['state_bytes'] / 2**20:.1f} |")
  lines += ["", f"Ratio to Adam, non-jump steps: median **{res['ratio_median_non_jump']:.3f}**, "
            f"mean {res['ratio_mean_non_jump']:.3f}; all steps incl. jumps: "
            f"{res['ratio_total_time']:.3f}; optimizer state bytes: {res['ratio_state_bytes']:.2f}x "
            f"(Adam's 2 moments + {nc['state_bytes'] / base['state_bytes'] * 2 - 2:.1f} parameter "
            f"copies of history)."]
  return "\n".join(lines)


def plot(res, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 3.5))
  for name, m in res["methods"].items():
    ax.plot(m["times_ms"], lw=0.6, label=f"{name} (median {m['median_step_ms']:.2f} ms)")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("step time (ms)")
  ax.set_title(f"per-step time, {res['n_params']:,}-param MLP (spikes: record every "
               f"{res['interval']}, jump every {res['interval'] * res['ctx']})")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="1,200 steps (one jump), for CI")
  parser.add_argument("--steps", type=int, default=3200)
  parser.add_argument("--block", type=int, default=100, help="steps per alternating block")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
  steps = 1200 if args.quick else args.steps
  res = run(steps, args.block)
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
