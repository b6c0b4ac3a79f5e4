"""The demo: Adam with and without nowcasting on sklearn digits (embedded, no downloads).

``python -m optax_nowcast demo`` trains an MLP (64-128-128-10) with Adam and with
``optax.chain(adam, nowcast(linefit()))`` for 3 seeds, both on the same minibatch sequence per seed,
and prints the steps each needs to reach Adam's final validation accuracy (and loss), the reduction
and the wall time. Steps-to-target is read off a moving average of the validation curve (evaluated
every ``eval_every`` steps) to keep one lucky evaluation from deciding it; the target is the moving
average's last value for Adam of the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_nowcast as onc
from optax_nowcast.tasks import MLP, load_digits_split


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  steps: int = 2000
  seeds: int = 3
  batch_size: int = 32
  learning_rate: float = 3e-4
  interval: int = 20
  ctx: int = 5
  horizon: int = 5
  eval_every: int = 10
  smooth: int = 5  # evaluations in the moving average
  chunk: int = 100  # steps per jitted call (progress-bar granularity)


def _methods(cfg: DemoConfig) -> dict[str, optax.GradientTransformation]:
  adam = optax.adam(cfg.learning_rate)
  return {
      "adam": adam,
      "adam+nowcast(linefit)": optax.chain(
          adam, onc.nowcast(onc.predictors.linefit(), interval=cfg.interval, ctx=cfg.ctx,
                            horizon=cfg.horizon)),
  }


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(x)))
  return np.convolve(x, np.ones(window) / window, mode="valid")


def steps_to_target(curve: np.ndarray, eval_steps: np.ndarray, target: float, window: int,
                    higher_is_better: bool = True) -> int | None:
  """First step at which the moving average of ``curve`` reaches ``target`` (None if never)."""
  sm = moving_average(curve, window)
  hit = np.flatnonzero(sm >= target - 1e-12 if higher_is_better else sm <= target + 1e-12)
  return int(eval_steps[hit[0] + len(curve) - len(sm)]) if len(hit) else None


def _make_chunk_fn(tx, model, data, cfg: DemoConfig):
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)

  def xent(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

  def train_step(carry, _):
    params, opt_state, key = carry
    key, sub = jax.random.split(key)
    idx = jax.random.randint(sub, (cfg.batch_size,), 0, x_train.shape[0])
    grads = jax.grad(xent)(params, x_train[idx], y_train[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), None

  def eval_block(carry, _):
    carry, _ = jax.lax.scan(train_step, carry, None, length=cfg.eval_every)
    logits = model.apply(carry[0], x_val)
    acc = jnp.mean(jnp.argmax(logits, -1) == y_val)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()
    return carry, (acc, loss)

  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(carry):
    return jax.lax.scan(eval_block, carry, None, length=cfg.chunk // cfg.eval_every)

  return chunk


def train(tx, seed: int, cfg: DemoConfig, data, progress=None) -> dict[str, Any]:
  """Trains one seed; returns validation curves, cumulative wall time per chunk and jump steps."""
  model = MLP((128, 128))
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 64)))
  carry = (params, tx.init(params), jax.random.PRNGKey(1000 + seed))
  chunk = _make_chunk_fn(tx, model, data, cfg)
  compiled = chunk.lower(carry).compile()  # compile outside the timed region
  accs, losses, times = [], [], []
  elapsed = 0.0
  for _ in range(cfg.steps // cfg.chunk):
    t0 = time.perf_counter()
    carry, (acc, loss) = compiled(carry)
    acc, loss = jax.device_get((acc, loss))
    elapsed += time.perf_counter() - t0
    accs.append(acc)
    losses.append(loss)
    times.append(elapsed)
    if progress is not None:
      progress.update(cfg.chunk)
  nc = onc.find_nowcast_state(carry[1])
  return {
      "val_acc": np.concatenate(accs).astype(float),
      "val_loss": np.concatenate(losses).astype(float),
      "chunk_times": np.asarray(times),
      "n_jumps": int(nc.n_jumps) if nc is not None else 0,
  }


def run_demo(cfg: DemoConfig, out_dir: str, quiet: bool = False) -> dict[str, Any]:
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover
    tqdm = None
  data = load_digits_split()
  methods = _methods(cfg)
  eval_steps = np.arange(1, cfg.steps // cfg.eval_every + 1) * cfg.eval_every
  jump_steps = [int(j) + 1 for j in
                onc.schedules.constant_period(cfg.interval * cfg.ctx).jump_steps(cfg.steps - 1)]
  total = cfg.steps * cfg.seeds * len(methods)
  bar = tqdm(total=total, desc="training", unit="step", disable=quiet) if tqdm else None
  runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
  for seed in range(cfg.seeds):
    for name, tx in methods.items():
      if bar is not None:
        bar.set_postfix_str(f"seed {seed} {name}")
      runs[name].append(train(tx, seed, cfg, data, bar))
  if bar is not None:
    bar.close()

  rows = []
  for seed in range(cfg.seeds):
    base = runs["adam"][seed]
    acc_target = float(moving_average(base["val_acc"], cfg.smooth)[-1])
    loss_target = float(moving_average(base["val_loss"], cfg.smooth)[-1])
    for name in methods:
      r = runs[name][seed]
      s_acc = steps_to_target(r["val_acc"], eval_steps, acc_target, cfg.smooth)
      s_loss = steps_to_target(r["val_loss"], eval_steps, loss_target, cfg.smooth, False)
      chunk_steps = np.arange(1, len(r["chunk_times"]) + 1) * cfg.chunk
      t_acc = float(np.interp(s_acc, np.concatenate([[0], chunk_steps]),
                              np.concatenate([[0.0], r["chunk_times"]]))) if s_acc else None
      rows.append({
          "seed": seed, "method": name, "target_val_acc": acc_target,
          "steps_to_acc_target": s_acc, "steps_to_loss_target": s_loss,
          "final_val_acc": float(moving_average(r["val_acc"], cfg.smooth)[-1]),
          "final_val_loss": float(moving_average(r["val_loss"], cfg.smooth)[-1]),
          "wall_time_s": float(r["chunk_times"][-1]), "wall_time_to_acc_target_s": t_acc,
          "n_jumps": r["n_jumps"],
      })

  summary = _summarise(rows, methods, cfg)
  os.makedirs(out_dir, exist_ok=True)
  result = {"config": dataclasses.asdict(cfg), "rows": rows, "summary": summary,
            "jump_steps": jump_steps, "eval_steps": eval_steps.tolist(),
            "curves": {n: {"val_acc": [r["val_acc"].tolist() for r in rs],
                           "val_loss": [r["val_loss"].tolist() for r in rs]}
                       for n, rs in runs.items()},
            "jax_backend": jax.default_backend()}
  with open(os.path.join(out_dir, "demo_digits.json"), "w") as f:
    json.dump(result, f, indent=1)
  table = format_table(summary, cfg)
  with open(os.path.join(out_dir, "demo_digits.md"), "w") as f:
    f.write(table + "\n")
  plot_path = _plot(runs, eval_steps, jump_steps, cfg, os.path.join(out_dir, "demo_digits.png"))
  result["table"] = table
  result["plot"] = plot_path
  return result


def _median(values):
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def _summarise(rows, methods, cfg):
  summary = {}
  for name in methods:
    mine = [r for r in rows if r["method"] == name]
    base = [r for r in rows if r["method"] == "adam"]
    red_acc, red_loss = [], []
    for m, b in zip(mine, base, strict=True):
      if m["steps_to_acc_target"] and b["steps_to_acc_target"]:
        red_acc.append(100.0 * (1 - m["steps_to_acc_target"] / b["steps_to_acc_target"]))
      if m["steps_to_loss_target"] and b["steps_to_loss_target"]:
        red_loss.append(100.0 * (1 - m["steps_to_loss_target"] / b["steps_to_loss_target"]))
    summary[name] = {
        "steps_to_acc_target_per_seed": [r["steps_to_acc_target"] for r in mine],
        "reached_acc_target": sum(r["steps_to_acc_target"] is not None for r in mine),
        "median_steps_to_acc_target": _median([r["steps_to_acc_target"] for r in mine]),
        "median_reduction_acc_pct": _median(red_acc) if len(red_acc) == len(mine) else None,
        "reduction_acc_pct_per_seed": red_acc,
        "median_steps_to_loss_target": _median([r["steps_to_loss_target"] for r in mine]),
        "median_reduction_loss_pct": _median(red_loss) if len(red_loss) == len(mine) else None,
        "median_final_val_acc": _median([r["final_val_acc"] for r in mine]),
        "median_wall_time_s": _median([r["wall_time_s"] for r in mine]),
        "median_wall_time_to_acc_target_s": _median([r["wall_time_to_acc_target_s"] for r in mine]),
        "n_seeds": len(mine),
    }
  return summary


def _fmt(x, spec):
  return "not reached" if x is None else format(x, spec)


def format_table(summary, cfg: DemoConfig) -> str:
  lines = [
      f"digits MLP, Adam lr {cfg.learning_rate}, {cfg.steps} steps, batch {cfg.batch_size}, "
      f"{cfg.seeds} seeds (medians); nowcast: linefit, interval {cfg.interval}, ctx {cfg.ctx}, "
      f"k {cfg.horizon}",
      "",
      "| method | steps to Adam's final val acc (per seed) | reduction | steps to Adam's final val loss "
      "| reduction | final val acc | wall time (s) | wall time to acc target (s) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name, s in summary.items():
    per_seed = ", ".join(_fmt(v, "d") for v in s["steps_to_acc_target_per_seed"])
    lines.append(
        f"| {name} | {_fmt(s['median_steps_to_acc_target'], '.0f')} ({per_seed}) | "
        f"{_fmt(s['median_reduction_acc_pct'], '.1f')} % | "
        f"{_fmt(s['median_steps_to_loss_target'], '.0f')} | "
        f"{_fmt(s['median_reduction_loss_pct'], '.1f')} % | "
        f"{_fmt(s['median_final_val_acc'], '.4f')} | {_fmt(s['median_wall_time_s'], '.2f')} | "
        f"{_fmt(s['median_wall_time_to_acc_target_s'], '.2f')} |")
  return "\n".join(lines)


def _plot(runs, eval_steps, jump_steps, cfg, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:  # pragma: no cover
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"adam": "tab:blue", "adam+nowcast(linefit)": "tab:orange"}
  for name, rs in runs.items():
    for key, ax in zip(("val_loss", "val_acc"), axes, strict=True):
      curves = np.stack([r[key] for r in rs])
      ax.plot(eval_steps, np.median(curves, 0), color=colors.get(name), label=f"{name} (median)")
      ax.fill_between(eval_steps, curves.min(0), curves.max(0), color=colors.get(name), alpha=0.2)
  for ax, title in zip(axes, ("validation loss", "validation accuracy"), strict=True):
    for j in jump_steps:
      ax.axvline(j, color="gray", lw=0.5, alpha=0.4)
    ax.set_xlabel("step")
    ax.set_title(f"{title} (grey lines: jumps)")
    ax.legend()
  axes[0].set_yscale("log")
  axes[1].set_ylim(0.8, 1.0)
  fig.suptitle(f"sklearn digits MLP, {cfg.seeds} seeds: Adam vs Adam + nowcast(linefit)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m optax_nowcast demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  defaults = DemoConfig()
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--seeds", type=int, default=defaults.seeds)
  parser.add_argument("--out", default="nowcast_demo", help="folder for the JSON, table and plot")
  parser.add_argument("--quick", action="store_true", help="400 steps, 1 seed (a smoke test)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  cfg = DemoConfig(steps=400, seeds=1) if args.quick else DemoConfig(steps=args.steps, seeds=args.seeds)
  if cfg.steps % cfg.chunk:
    parser.error(f"--steps must be a multiple of {cfg.chunk}")
  t0 = time.perf_counter()
  result = run_demo(cfg, args.out, quiet=args.quiet)
  print(result["table"])
  print(f"\nwrote {args.out}/demo_digits.json, .md and .png in {time.perf_counter() - t0:.0f} s "
        f"(backend: {jax.default_backend()})")
  return result
