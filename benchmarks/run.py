"""Steps-to-target benchmark: the base optimizer vs nowcast methods on the real tasks (NiNo's protocol).

    python -m benchmarks.run                 # full suite: 7 tasks x {adam, linefit, linefit+} x 3 seeds
    python -m benchmarks.run --quick         # CI smoke run: FM-16 and LM-3-24, 300 steps, 1 seed
    python -m benchmarks.run --tasks FM-16 --methods adam,linefit --seeds 2
    python -m benchmarks.run --tasks FM-32 --methods adam,nino --seeds 3 --only-seeds 2  # one seed per core

For every task, method and seed it trains with the task's base optimizer (``optax_nowcast.tasks``), alone or
chained with ``nowcast``, on the same minibatch sequence per seed. Every ``eval_every`` steps it evaluates
the validation metric on the task's fixed validation subset; at the end it evaluates the whole validation
split. Training time is measured per chunk of ``eval_every`` jitted, donated steps, without evaluation and
compilation, so it includes every nowcast cost (recording, prediction, the jump).

Steps to target are read off a moving average (``smooth`` evaluations) of the validation curve. Two targets:
Adam's own final smoothed value for that seed (the primary measure: robust to how well our Adam matches the
paper's) and, for the vision tasks, the NiNo paper's fixed target. The reduction is ``1 - steps/steps_adam``
per seed; tables give medians over seeds.

Every finished (task, method, seed) is written to ``<out>/runs/<suite>/<task>/<method>/seed<k>.json`` and
never recomputed while its settings are unchanged, so an interrupted run resumes where it stopped.
Outputs: ``<out>/<suite>.json``, ``<out>/<suite>.md`` and ``<out>/<suite>_<task>.png``; with weight-prediction
methods also ``<out>/<suite>_weight_prediction.{json,md}`` (final metrics paired with Adam's per seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import optax_nowcast as onc
from optax_nowcast.tasks import TASKS, Task, make_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides a run's numbers (hashed into each run file)."""

  steps: int | None = None  # None: the task's own (10k for NiNo's tasks)
  eval_every: int = 50
  smooth: int = 5
  interval: int = 200  # NiNo: record every 200 steps ...
  ctx: int = 5  # ... 5 states: a jump every 1,000 steps
  horizon: int = 5  # linefit predicts at x = 2c (NiNo A.2): k = ctx intervals ahead
  val_size: int | None = None  # None: the task's own


FULL = Settings()
QUICK = Settings(steps=300, eval_every=10, smooth=3, interval=20, ctx=5, horizon=5, val_size=500)
SUITES = {
    "full": (FULL, ["FM-16", "C10-16", "FM-32", "C10-32", "LM-3-24", "LM-2-32", "LM-3-64"], 3),
    "quick": (QUICK, ["FM-16", "LM-3-24"], 1),
}


def _nowcast(predictor_fn: Callable[[], onc.Predictor]):
  def build(task: Task, s: Settings) -> optax.GradientTransformation:
    return optax.chain(task.optimizer(),
                       onc.nowcast(predictor_fn(), interval=s.interval, ctx=s.ctx, horizon=s.horizon))
  return build


def default_nino_weights() -> str | None:
  """``$OPTAX_NOWCAST_NINO_WEIGHTS``, else this workplace's converted official checkpoint if present."""
  if os.environ.get("OPTAX_NOWCAST_NINO_WEIGHTS"):
    return os.environ["OPTAX_NOWCAST_NINO_WEIGHTS"]
  p = os.path.join(os.path.dirname(REPO), "shared", "reference", "nino", "weights", "nino_no_posw.npz")
  return p if os.path.exists(p) else None


def _nino(task: Task, s: Settings) -> optax.GradientTransformation:
  """NiNo with the official checkpoint, NiNo's schedule: k-decay from 40 over the run's jumps."""
  weights = default_nino_weights()
  if weights is None:
    raise ValueError("method 'nino' needs the official NiNo checkpoint (nino_no_posw .pt or .npz): pass "
                     "--nino-weights PATH or set OPTAX_NOWCAST_NINO_WEIGHTS.")
  horizon = onc.schedules.k_decay(40, total_steps=task.spec.steps)
  return optax.chain(task.optimizer(), onc.nowcast(onc.predictors.nino(weights), interval=s.interval,
                                                   ctx=s.ctx, horizon=horizon))


def _wnn_plus_official(task: Task, s: Settings) -> optax.GradientTransformation:
  """WNN+ with the NiNo repository's nino_mlp checkpoint (next to nino_no_posw), k-decay from 40."""
  nino_w = default_nino_weights()
  weights = None if nino_w is None else os.path.join(os.path.dirname(nino_w), "nino_mlp.npz")
  if weights is None or not os.path.exists(weights):
    raise ValueError("method 'wnn+official' needs nino_mlp.npz next to the NiNo checkpoint "
                     "(OPTAX_NOWCAST_NINO_WEIGHTS).")
  horizon = onc.schedules.k_decay(40, total_steps=task.spec.steps)
  return optax.chain(task.optimizer(), onc.nowcast(onc.predictors.wnn_plus(weights), interval=s.interval,
                                                   ctx=s.ctx, horizon=horizon))


def _wnn_plus(variant: str | None = None, max_k: int = 40):
  """WNN+ with the weights shipped in optax_nowcast/pretrained (ours), k-decay from ``max_k`` (NiNo's 40).

  ``variant``: a ``WNN_PLUS_VARIANTS`` method name: that variant's weights instead of the shipped ones.
  """
  def build(task: Task, s: Settings) -> optax.GradientTransformation:
    horizon = onc.schedules.k_decay(max_k, total_steps=task.spec.steps)
    predictor = onc.predictors.wnn_plus(None if variant is None else variant_path(variant))
    return optax.chain(task.optimizer(), onc.nowcast(predictor, interval=s.interval, ctx=s.ctx,
                                                     horizon=horizon))
  return build


# Retrained variants of our predictors, read from ``benchmarks/weights`` (benchmark only, not shipped):
# method name -> (weights file name, the command that trains it; DIR = trajectories, OUT = an output folder).
# NiNo++ options (Knyazev 2025, NiNo++): a NiNo trained by our pipeline with that one option changed from the
# shipped one.
_NINO_TRAIN = "python -m optax_nowcast.metatrain train --predictor nino --runs DIR --steps 2000 --out OUT"
_NINO_HEAD = ("python -m optax_nowcast.metatrain train --predictor nino --runs DIR "
              "--tasks digits,FM-16,LM-3-24 --steps 1000 --head-edges 4096 --out OUT")
NINO_VARIANTS = {
    "nino++c": ("nino_c6", f"{_NINO_TRAIN} --node-features lpe+centrality --lpe 6"),  # 5 eigvecs + centrality
    # the recurrent heads: 1,000 steps on 21 runs (no LM-2-32), heads on 4,096 edges a window (weights README)
    "nino++gru": ("nino_gru", f"{_NINO_HEAD} --head gru"),
    "nino++lstm": ("nino_lstm", f"{_NINO_HEAD} --head lstm"),
    "nino++lpe5": ("nino_lpe5", f"{_NINO_TRAIN} --lpe 5"),
    # the shipped weights fine-tuned on 27 runs of the recipe, C10-16 included (no LM-2-32; weights README)
    "nino-ours+c10": ("nino_c10", "python -m optax_nowcast.metatrain train --predictor nino --runs DIR "
                                  "--tasks digits,FM-16,LM-3-24,C10-16 --init "
                                  "optax_nowcast/pretrained/nino.msgpack --steps 600 --learning-rate 1e-3 "
                                  "--out OUT"),
    # the same fine-tuning on all 30 runs of the recipe (C10-16 and LM-2-32 included; weights README)
    "nino-ours+rc": ("nino_rc", "python -m optax_nowcast.metatrain train --predictor nino --runs DIR --init "
                                "optax_nowcast/pretrained/nino.msgpack --steps 600 --learning-rate 1e-3 "
                                "--out OUT"),
    # from a random init by the whole recipe (= `metatrain pretrained --only nino`: 30 runs, 2,000 steps)
    "nino-recipe": ("nino_recipe", _NINO_TRAIN),  # DIR: every task of metatrain.pretrained.RECIPE
}
# WNN+ variants. The shipped WNN+ is the recipe's (``metatrain pretrained``: all 30 runs, C10-16 included).
WNN_PLUS_VARIANTS = {
    # the WNN+ shipped until 2026-12-01: the same training on the 24 runs collected before C10-16 joined
    "wnn+noc10": ("wnn_plus_noc10", "python -m optax_nowcast.metatrain train --predictor wnn+ --runs DIR "
                                    "--tasks digits,FM-16,LM-2-32,LM-3-24 --steps 4000 --elements 512 "
                                    "--out OUT"),
    # wnn+noc10's data (24 runs) and training, hidden 32 instead of 128: 15x fewer multiply-adds per element
    # a jump (the NiNo repository also has a hidden-32 WNN+)
    "wnn+h32": ("wnn_plus_h32", "python -m optax_nowcast.metatrain train --predictor wnn+ --runs DIR "
                                "--tasks digits,FM-16,LM-2-32,LM-3-24 --hidden 32 --steps 4000 "
                                "--elements 512 --out OUT"),
}
VARIANTS = {**NINO_VARIANTS, **WNN_PLUS_VARIANTS}


def variant_path(method: str) -> str:
  """The weights file of a ``VARIANTS`` method; a clear error, with the command that makes it, if absent."""
  name, command = VARIANTS[method]
  folder = os.environ.get("OPTAX_NOWCAST_WEIGHT_VARIANTS", os.path.join(REPO, "benchmarks", "weights"))
  path = os.path.join(folder, f"{name}.msgpack")
  if not os.path.exists(path):
    kind = "nino" if method in NINO_VARIANTS else "wnn_plus"
    raise FileNotFoundError(
        f"method {method!r} needs {path}: train it with `{command}` and copy OUT/{kind}.msgpack and "
        f"OUT/{kind}.json there as {name}.msgpack and {name}.json (or set OPTAX_NOWCAST_WEIGHT_VARIANTS to "
        "their folder).")
  return path


def _nino_ours(dynamic: bool = False, rollback: bool = False, variant: str | None = None):
  """NiNo with the weights shipped in optax_nowcast/pretrained (ours), k-decay from 40.

  ``dynamic``: NiNo++'s growing period, from ``ctx * interval`` steps to three times that over the run.
  ``rollback``: undo a jump when, 50 steps after it (nowcast's default window at interval 200), the running
  mean of the loss exceeds 1.5x its running mean before the jump (the horizon then halves).
  ``variant``: a ``NINO_VARIANTS`` method name: that variant's weights instead of the shipped ones.
  """
  def build(task: Task, s: Settings) -> optax.GradientTransformation:
    base = s.ctx * s.interval
    period = (onc.schedules.dynamic_period(base, 3 * base, total_steps=task.spec.steps) if dynamic
              else None)
    horizon = onc.schedules.k_decay(40, total_steps=task.spec.steps)
    kw = {"rollback_factor": 1.5} if rollback else {}  # window: min(50, interval // 4) steps
    predictor = onc.predictors.nino(None if variant is None else variant_path(variant))
    return optax.chain(task.optimizer(), onc.nowcast(predictor, interval=s.interval, ctx=s.ctx,
                                                     period=period, horizon=horizon, **kw))
  return build


def _lfd2(task: Task, s: Settings) -> optax.GradientTransformation:
  """LFD-2 (shipped weights, n = 5 and m = 40 saved states): farcast from [w_0, w_n], k-decay from 40."""
  predictor = onc.predictors.lfd2()
  horizon = onc.schedules.k_decay(40, total_steps=task.spec.steps)
  return optax.chain(task.optimizer(), onc.farcast(predictor, n=s.ctx, unit=s.interval, horizon=horizon))


METHODS: dict[str, Callable[[Task, Settings], optax.GradientTransformation]] = {
    "adam": lambda task, s: task.optimizer(),
    "linefit": _nowcast(onc.predictors.linefit),
    "linefit+": _nowcast(onc.predictors.linefit_plus),
    "nino": _nino,
    "wnn+official": _wnn_plus_official,
    "wnn": _nowcast(onc.predictors.wnn),  # shipped weights; ctx 5, a fixed jump of 5 intervals
    "wnn+": _wnn_plus(),
    # the same weights with half NiNo's horizons (k-decay from 20): WNN+'s jumps raise the 50-step training
    # loss more than NiNo's (FM-32, median over 27 jumps: 1.94x against 1.22x for the official NiNo)
    "wnn+k20": _wnn_plus(max_k=20),
    **{m: _wnn_plus(variant=m) for m in WNN_PLUS_VARIANTS},
    "lfd2": _lfd2,
    "nino-ours": _nino_ours(),
    "nino-ours+dp": _nino_ours(dynamic=True),
    "nino-ours+rb": _nino_ours(rollback=True),
    **{m: _nino_ours(variant=m) for m in NINO_VARIANTS},
    # AdamW weight prediction (Guan 2023): gradients at the weights predicted s steps ahead.
    "wp1": lambda task, s: task.optimizer(),
    "wp2": lambda task, s: task.optimizer(),
    "wp3": lambda task, s: task.optimizer(),
    "linefit+wp2": _nowcast(onc.predictors.linefit),
    "nino-ours+wp2": _nino_ours(),  # our NiNo's jumps on top of weight prediction with s = 2
}
# Methods that take their gradients at the weights predicted WP_STEPS[m] steps ahead.
WP_STEPS = {"wp1": 1, "wp2": 2, "wp3": 3, "linefit+wp2": 2, "nino-ours+wp2": 2}


def _overrides(s: Settings) -> dict[str, int]:
  return {k: v for k, v in (("steps", s.steps), ("val_size", s.val_size)) if v is not None}


def _spec_for(name: str, s: Settings):
  return dataclasses.replace(TASKS[name], **_overrides(s))


# Methods whose numbers depend on a weights file: its hash joins the fingerprint, so retrained weights
# recompute their runs instead of reusing old ones.
WEIGHTS_OF = {"wnn": "wnn", "wnn+": "wnn_plus", "wnn+k20": "wnn_plus", "lfd2": "lfd2", "nino-ours": "nino",
              "nino-ours+dp": "nino", "nino-ours+rb": "nino", "nino-ours+wp2": "nino"}


def _weights_hash(method: str) -> str | None:
  if method in VARIANTS:
    path = variant_path(method)
  elif method in WEIGHTS_OF:
    from optax_nowcast import pretrained
    path = pretrained.path(WEIGHTS_OF[method])
  else:
    return None
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


# Bumped when a method's definition changes, so that its old runs are recomputed (2: rollback judged on the
# running mean 50 steps after a jump instead of the mean of the first 11 steps).
METHOD_VERSION = {"nino-ours+rb": 2}


def _fingerprint(spec, method: str, seed: int, s: Settings) -> str:
  parts = [dataclasses.asdict(spec), method, seed, dataclasses.asdict(s)]
  if method in METHOD_VERSION:
    parts.append(METHOD_VERSION[method])
  if method in WEIGHTS_OF or method in VARIANTS:
    parts.append(_weights_hash(method))
  blob = json.dumps(parts, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_chunk(task: Task, method: str, s: Settings, seed: int):
  """``(chunk, carry)``: the jitted, donated ``chunk(carry, idx) -> (carry, mean loss)`` that trains
  ``method`` for ``len(idx)`` steps, and its initial ``(params, opt_state)`` carry."""
  tx = optax.with_extra_args_support(METHODS[method](task, s))
  params = task.init(jax.random.PRNGKey(seed))
  carry = (params, tx.init(params))

  if method in WP_STEPS:
    vg = onc.weight_prediction.value_and_grad_at_predicted(task.loss, WP_STEPS[method],
                                                           learning_rate=task.spec.learning_rate)
  else:
    vg = lambda p, o, idx: jax.value_and_grad(task.loss)(p, idx)

  def step(c, idx):
    p, o = c
    loss, g = vg(p, o, idx)
    u, o = tx.update(g, o, p, value=loss)  # the loss, for nowcast's rollback
    return (optax.apply_updates(p, u), o), loss

  @functools.partial(jax.jit, donate_argnums=0)
  def chunk(c, idx):
    c, losses = jax.lax.scan(step, c, idx)
    return c, losses.mean()

  return chunk, carry


def train_one(task: Task, method: str, seed: int, s: Settings, progress=None) -> dict[str, Any]:
  """Trains one (task, method, seed); returns its curves, timings and jump record."""
  steps, every = task.spec.steps, s.eval_every
  if steps % every:
    raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({every}).")
  chunk, carry = build_chunk(task, method, s, seed)
  evaluate = jax.jit(task.evaluate)
  t0 = time.perf_counter()
  compiled = chunk.lower(carry, task.batch_indices(seed, 0, every)).compile()
  compile_s = time.perf_counter() - t0
  metric, val_loss, train_loss, train_time = [], [], [], []
  jumps, elapsed, last_jumps = [], 0.0, 0
  for start in range(0, steps, every):
    idx = task.batch_indices(seed, start, every)
    t0 = time.perf_counter()
    carry, tl = compiled(carry, idx)
    jax.block_until_ready(carry)
    elapsed += time.perf_counter() - t0
    ev = jax.device_get(evaluate(carry[0]))
    metric.append(float(ev["metric"]))
    val_loss.append(float(ev["loss"]))
    train_loss.append(float(tl))
    train_time.append(elapsed)
    nc = onc.find_nowcast_state(carry[1])
    if nc is not None and int(nc.n_jumps) > last_jumps:
      last_jumps = int(nc.n_jumps)
      jumps.append(int(nc.last_jump_step) + 1)  # the first step whose params are the prediction
    if progress is not None:
      progress.update(every)
  full = jax.device_get(jax.jit(task.evaluate_full)(carry[0]))
  nc = onc.find_nowcast_state(carry[1])
  return {
      "task": task.name, "method": method, "seed": seed,
      "eval_steps": list(range(every, steps + 1, every)), "val_metric": metric, "val_loss": val_loss,
      "train_loss": train_loss, "train_time_s": train_time, "compile_s": compile_s,
      "final_full_val_metric": float(full["metric"]), "final_full_val_loss": float(full["loss"]),
      "jump_steps": jumps, "n_jumps": 0 if nc is None else int(nc.n_jumps),
      "n_rejected": 0 if nc is None else int(nc.n_rejected),
      "n_rollbacks": int(getattr(nc, "n_rollbacks", 0)),  # farcast's state has no rollback
      "finite": bool(np.all(np.isfinite(np.concatenate([metric, val_loss, train_loss])))),
      "backend": jax.default_backend(),
  }


def moving_average(x, window: int) -> np.ndarray:
  x = np.asarray(x, float)
  window = max(1, min(window, len(x)))
  return np.convolve(x, np.ones(window) / window, mode="valid")


def steps_to_target(curve, eval_steps, target: float, window: int, higher_is_better: bool) -> int | None:
  """First evaluation step at which the moving average of ``curve`` reaches ``target`` (None: never)."""
  sm = moving_average(curve, window)
  hit = np.flatnonzero(sm >= target - 1e-12 if higher_is_better else sm <= target + 1e-12)
  return int(eval_steps[hit[0] + len(curve) - len(sm)]) if len(hit) else None


def _time_at(run, step):
  if step is None:
    return None
  return float(np.interp(step, [0, *run["eval_steps"]], [0.0, *run["train_time_s"]]))


def _median(values):
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def summarise_task(runs: dict[str, list[dict]], spec, s: Settings) -> dict[str, Any]:
  """Per method: steps/time to Adam's own final value and to the paper target, reductions, medians."""
  hib = spec.higher_is_better
  base = {r["seed"]: r for r in runs.get("adam", [])}
  out = {}
  for method, rs in runs.items():
    rows = []
    for r in sorted(rs, key=lambda r: r["seed"]):
      b = base.get(r["seed"])
      target = float(moving_average(b["val_metric"], s.smooth)[-1]) if b else None
      st = steps_to_target(r["val_metric"], r["eval_steps"], target, s.smooth, hib) if b else None
      sb = steps_to_target(b["val_metric"], b["eval_steps"], target, s.smooth, hib) if b else None
      sp = (steps_to_target(r["val_metric"], r["eval_steps"], spec.paper_target, s.smooth, hib)
            if spec.paper_target is not None else None)
      spb = (steps_to_target(b["val_metric"], b["eval_steps"], spec.paper_target, s.smooth, hib)
             if spec.paper_target is not None and b else None)
      rows.append({
          "seed": r["seed"], "target": target, "steps_to_target": st,
          "reduction_pct": 100 * (1 - st / sb) if st and sb else None,
          "time_to_target_s": _time_at(r, st),
          "time_reduction_pct": 100 * (1 - _time_at(r, st) / _time_at(b, sb)) if st and sb else None,
          "steps_to_paper_target": sp,
          "paper_reduction_pct": 100 * (1 - sp / spb) if sp and spb else None,
          "final_val_metric": float(moving_average(r["val_metric"], s.smooth)[-1]),
          "final_full_val_metric": r["final_full_val_metric"],
          "final_full_val_loss": r["final_full_val_loss"], "train_time_s": r["train_time_s"][-1],
          "n_jumps": r["n_jumps"], "n_rejected": r["n_rejected"], "n_rollbacks": r.get("n_rollbacks", 0),
          "finite": bool(np.all(np.isfinite(np.concatenate([r["val_metric"], r["val_loss"],
                                                             r["train_loss"]])))),
      })
    med = {k: _median([row[k] for row in rows]) for k in
           ("steps_to_target", "reduction_pct", "time_to_target_s", "time_reduction_pct",
            "steps_to_paper_target", "paper_reduction_pct", "final_val_metric", "final_full_val_metric",
            "train_time_s")}
    med["reached_target"] = sum(row["steps_to_target"] is not None for row in rows)
    med["reached_paper_target"] = sum(row["steps_to_paper_target"] is not None for row in rows)
    med["n_seeds"] = len(rows)
    if med["reached_target"] < len(rows):  # a seed that never reaches the target has no finite reduction
      med["reduction_pct"] = med["time_reduction_pct"] = None
    out[method] = {"per_seed": rows, "median": med}
  return out


def _fmt(x, spec="", none="—"):
  return none if x is None else format(x, spec)


def format_table(suite: str, summary: dict, s: Settings) -> str:
  lines = [
      f"Suite `{suite}`: nowcast every {s.interval * s.ctx} steps (interval {s.interval}, ctx {s.ctx}, "
      f"k {s.horizon}); validation every {s.eval_every} steps, moving average of {s.smooth}. "
      "Medians over seeds; reduction = 1 - steps / Adam's steps to Adam's own final value "
      "(\"—\": a seed never reached it).",
      "",
      "| task | method | seeds | steps to Adam's final (per seed) | reduction | time to it (s) | "
      "time reduction | final val (subset) | final val (full) | paper target: steps (reached) |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for task, t in summary.items():
    spec = TASKS[task]
    pct = spec.metric == "accuracy"
    vfmt = ".4f" if pct else ".3f"
    for method, m in t["methods"].items():
      med = m["median"]
      per = ", ".join(_fmt(r["steps_to_target"], "d", "never") for r in m["per_seed"])
      paper = ("n/a" if spec.paper_target is None else
               f"{_fmt(med['steps_to_paper_target'], '.0f', 'never')} ({med['reached_paper_target']}/"
               f"{med['n_seeds']})")
      lines.append(
          f"| {task} | {method} | {med['n_seeds']} | {_fmt(med['steps_to_target'], '.0f')} ({per}) | "
          f"{_fmt(med['reduction_pct'], '.1f')} % | {_fmt(med['time_to_target_s'], '.1f')} | "
          f"{_fmt(med['time_reduction_pct'], '.1f')} % | {_fmt(med['final_val_metric'], vfmt)} | "
          f"{_fmt(med['final_full_val_metric'], vfmt)} | {paper} |")
  rows = [r for t in summary.values() for m in t["methods"].values() for r in m["per_seed"]]
  jumps = sum(r["n_jumps"] for r in rows)
  bad = sum(not r.get("finite", True) for r in rows)
  rejected = sum(r["n_rejected"] for r in rows)
  lines += ["", f"{len(rows)} runs, {jumps} jumps, {rejected} rejected predictions; runs with a "
            f"non-finite training loss, validation loss or metric: {bad}."]
  return "\n".join(lines)


def weight_prediction_rows(summary: dict) -> list[dict[str, Any]]:
  """Per task and weight-prediction method: steps reduction and the paired change of the final metrics.

  The final metric and loss are each run's whole-validation-split values at its last step; the change is
  method minus Adam on the same seed (same initialisation and minibatches), averaged over seeds, as Guan
  et al. report "+0.47 % accuracy" or "-5.5 perplexity" against AdamW.
  """
  rows = []
  for task, t in summary.items():
    adam = t["methods"]["adam"]
    base = {r["seed"]: r for r in adam["per_seed"]}
    for method, m in t["methods"].items():
      if method not in WP_STEPS:
        continue
      pairs = [(r, base[r["seed"]]) for r in m["per_seed"] if r["seed"] in base]
      d_metric = [r["final_full_val_metric"] - b["final_full_val_metric"] for r, b in pairs]
      d_loss = [r["final_full_val_loss"] - b["final_full_val_loss"] for r, b in pairs]
      rows.append({
          "task": task, "method": method, "steps": WP_STEPS[method], "n_seeds": len(pairs),
          "reduction_pct": m["median"]["reduction_pct"],
          "per_seed_steps": [r["steps_to_target"] for r in m["per_seed"]],
          "adam_steps": [r["steps_to_target"] for r in adam["per_seed"]],
          "final_full_val_metric": m["median"]["final_full_val_metric"],
          "adam_final_full_val_metric": adam["median"]["final_full_val_metric"],
          "delta_metric_mean": float(np.mean(d_metric)) if pairs else None,
          "delta_metric_per_seed": d_metric,
          "delta_loss_mean": float(np.mean(d_loss)) if pairs else None,
          "better_seeds": sum((d > 0) == TASKS[task].higher_is_better for d in d_metric if d != 0),
      })
  return rows


HELD_OUT = ("FM-32", "C10-32", "LM-3-64")  # never in the trajectories our predictors were trained on


def format_matrix(suite: str, summary: dict) -> str:
  """One line per task, one column per nowcasting method: the median step reduction (at a glance).

  A cell reads ``33.6`` (all seeds reached Adam's final value), ``(2/3) 35.9`` (the median of the seeds
  that did, when some never did) or is empty (not run). Weight-prediction-only methods (``wp*``) and Adam
  are left out; held-out tasks (no predictor was trained on them) are marked with ``*``.
  """
  methods = [m for m in METHODS if m != "adam" and not m.startswith("wp")
             and any(m in t["methods"] for t in summary.values())]
  lines = [f"Suite `{suite}`: median reduction of Adam's steps to Adam's own final value, in % "
           "(`(r/n) x`: only r of n seeds reached it, x is their median); `*` a held-out task; `nino` is the "
           "official checkpoint, `nino-ours` our shipped weights, `+dp` dynamic period, `+rb` rollback, "
           "`nino++c` / `nino++gru` / ... our NiNo retrained with one NiNo++ option (`NINO_VARIANTS`), "
           "`wnn+` our shipped WNN+ (30 runs, C10-16 included; `wnn+k20`: k-decay from 20, not 40), "
           "`wnn+noc10` the WNN+ shipped before it (24 runs, no C10-16), `wnn+h32` that one at hidden 32, "
           "`wnn+official` the NiNo repository's WNN+ checkpoint (`nino_mlp`), "
           "`nino-ours+c10` our shipped NiNo fine-tuned with C10-16 runs (`+rc`: on all 30 runs of the "
           "recipe), `nino-recipe` our NiNo trained from scratch on those 30 runs.", "",
           "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
  for task, t in summary.items():
    cells = []
    for m in methods:
      res = t["methods"].get(m)
      if res is None:
        cells.append("")
        continue
      med, rows = res["median"], res["per_seed"]
      if med["reached_target"] == med["n_seeds"]:
        cells.append(_fmt(med["reduction_pct"], ".1f"))
      else:
        got = [r["reduction_pct"] for r in rows if r["reduction_pct"] is not None]
        cells.append(f"({med['reached_target']}/{med['n_seeds']}) {_fmt(_median(got), '.1f')}")
    lines.append(f"| {task}{'*' if task in HELD_OUT else ''} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_weight_prediction_table(rows: list[dict[str, Any]]) -> str:
  """Markdown for :func:`weight_prediction_rows`."""
  lines = [
      "AdamW weight prediction (Guan 2023): gradients at the weights predicted `s` steps ahead; "
      "`linefit+wp2` is nowcasting with linefit (not linefit+), `nino-ours+wp2` with our shipped NiNo, on "
      "top of s = 2. Final metrics on the "
      "whole validation split; change = method - Adam on the same seed, mean over seeds (accuracy in "
      "points, perplexity in units).",
      "",
      "| task | method | s | steps to Adam's final (per seed; Adam's) | reduction | final val (full) | "
      "Adam's | change, mean (per seed) | seeds better than Adam | val loss change |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    pct = TASKS[r["task"]].metric == "accuracy"
    scale, unit, f = (100, " pt", "+.2f") if pct else (1, "", "+.3f")
    vfmt = ".4f" if pct else ".3f"
    per = ", ".join(_fmt(x, "d", "never") for x in r["per_seed_steps"])
    adam = ", ".join(_fmt(x, "d", "never") for x in r["adam_steps"])
    dper = ", ".join(format(scale * d, f) for d in r["delta_metric_per_seed"])
    lines.append(
        f"| {r['task']} | {r['method']} | {r['steps']} | {per}; {adam} | "
        f"{_fmt(r['reduction_pct'], '.1f')} % | "
        f"{_fmt(r['final_full_val_metric'], vfmt)} | {_fmt(r['adam_final_full_val_metric'], vfmt)} | "
        f"{_fmt(None if r['delta_metric_mean'] is None else scale * r['delta_metric_mean'], f)}{unit} "
        f"({dper}) | {r['better_seeds']}/{r['n_seeds']} | {_fmt(r['delta_loss_mean'], '+.4f')} |")
  return "\n".join(lines)


def plot_task(task: str, runs: dict[str, list[dict]], path: str) -> str | None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:  # pragma: no cover
    return None
  spec = TASKS[task]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for i, (method, rs) in enumerate(runs.items()):
    color = f"C{i}"
    steps = np.asarray(rs[0]["eval_steps"])
    for key, ax in zip(("val_metric", "train_loss"), axes, strict=True):
      curves = np.stack([r[key] for r in rs])
      ax.plot(steps, np.median(curves, 0), color=color, lw=1, label=f"{method} (median of {len(rs)})")
      if len(rs) > 1:
        ax.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.15)
    for j in rs[0]["jump_steps"]:
      axes[0].axvline(j, color=color, lw=0.4, alpha=0.4, ls=":")
  if spec.paper_target is not None:
    axes[0].axhline(spec.paper_target, color="k", lw=0.6, ls="--", label="NiNo paper target")
  axes[0].set_title(f"{task}: validation {spec.metric} (dotted: jumps)")
  axes[1].set_title(f"{task}: training loss (mean per {steps[0]} steps)")
  if spec.metric == "perplexity":
    axes[0].set_yscale("log")
  else:
    lo = np.quantile(np.concatenate([np.ravel([r["val_metric"] for r in rs]) for rs in runs.values()]), 0.05)
    axes[0].set_ylim(lo, None)
  axes[1].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run_suite(suite: str, tasks: list[str], methods: list[str], seeds: int, s: Settings, out: str,
              data_dir: str | None = None, force: bool = False, quiet: bool = False,
              only_seeds: list[int] | None = None) -> dict[str, Any]:
  """Runs (or resumes) a suite and writes its JSON, table and plots. Returns the summary and counts.

  ``only_seeds`` computes just those of seeds ``0..seeds-1`` (finished runs of the others are still
  reported), so that one suite can be split across processes, one per core.
  """
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover
    tqdm = None
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"Unknown method {m!r}; choose from {sorted(METHODS)}.")
  if "adam" not in methods:
    raise ValueError("methods must include 'adam': it defines the target and the reductions.")
  if only_seeds is not None and not set(only_seeds) <= set(range(seeds)):
    raise ValueError(f"only_seeds {sorted(only_seeds)} must lie in 0..{seeds - 1}: raise seeds or drop them.")
  todo, loaded, computed = [], {}, 0
  for name in tasks:
    if name not in TASKS:
      raise ValueError(f"Unknown task {name!r}; choose from {sorted(TASKS)}.")
  # Resolve which runs exist before loading any data (a finished suite needs no data at all).
  for name in tasks:
    spec = _spec_for(name, s)
    for method in methods:
      for seed in range(seeds):
        path = os.path.join(out, "runs", suite, name, method, f"seed{seed}.json")
        fp = _fingerprint(spec, method, seed, s)
        if not force and os.path.exists(path):
          with open(path) as f:
            r = json.load(f)
          if r.get("fingerprint") == fp:
            loaded[(name, method, seed)] = r
            continue
        if only_seeds is not None and seed not in only_seeds:
          continue
        todo.append((name, method, seed, path, fp))
  total = sum(_spec_for(n, s).steps for n, *_ in todo)
  bar = tqdm(total=total, unit="step", disable=quiet or not todo) if tqdm else None
  task_cache: dict[str, Task] = {}
  for name, method, seed, path, fp in todo:
    if name not in task_cache:
      task_cache.clear()  # one task's data on the device at a time
      task_cache[name] = make_task(name, data_dir, **_overrides(s))
    if bar is not None:
      bar.set_postfix_str(f"{name} {method} seed {seed}")
    r = train_one(task_cache[name], method, seed, s, bar)
    r["fingerprint"] = fp
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(r, f)
    os.replace(path + ".tmp", path)
    loaded[(name, method, seed)] = r
    computed += 1
    if quiet:
      print(f"done {name} {method} seed {seed}: final val {r['val_metric'][-1]:.4f}, "
            f"{r['train_time_s'][-1]:.0f} s, {r['n_jumps']} jumps", flush=True)
  if bar is not None:
    bar.close()

  rep = report(suite, seeds, s, out)
  return {**rep, "computed": computed, "reused": len(loaded) - computed}


def _finished_runs(suite: str, seeds: int, s: Settings, out: str) -> dict[str, dict[str, list[dict]]]:
  """Every task of the suite with all ``seeds`` of Adam done, and each method with all seeds done."""
  root = os.path.join(out, "runs", suite)
  found: dict[str, dict[str, list[dict]]] = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    if name not in TASKS:
      continue
    spec = _spec_for(name, s)
    runs = {}
    for method in METHODS:
      rs = []
      for seed in range(seeds):
        path = os.path.join(root, name, method, f"seed{seed}.json")
        if not os.path.exists(path):
          break
        with open(path) as f:
          r = json.load(f)
        if r.get("fingerprint") != _fingerprint(spec, method, seed, s):
          break
        rs.append(r)
      if len(rs) == seeds:
        runs[method] = rs
    if "adam" in runs:
      found[name] = runs
  return found


def report(suite: str, seeds: int, s: Settings, out: str) -> dict[str, Any]:
  """Summarises every finished (task, method) of the suite: ``<suite>.json``, ``.md`` and plots."""
  order = list(SUITES[suite][1]) if suite in SUITES else []
  found = _finished_runs(suite, seeds, s, out)
  summary = {}
  for name in sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n)):
    runs = found[name]
    summary[name] = {"spec": dataclasses.asdict(_spec_for(name, s)),
                     "methods": summarise_task(runs, _spec_for(name, s), s)}
    plot_task(name, runs, os.path.join(out, f"{suite}_{name}.png"))
  table = format_table(suite, summary, s)
  write_results(out, suite, {"suite": suite, "settings": dataclasses.asdict(s), "seeds": seeds,
                             "summary": summary, "backend": jax.default_backend(),
                             "runs": f"runs/{suite}/<task>/<method>/seed<k>.json"}, table)
  with open(os.path.join(out, f"{suite}_matrix.md"), "w") as f:
    f.write(format_matrix(suite, summary) + "\n")
  wp = weight_prediction_rows(summary)
  if wp:
    write_results(out, f"{suite}_weight_prediction", {"suite": suite, "rows": wp},
                  format_weight_prediction_table(wp))
  return {"summary": summary, "table": table, "weight_prediction": wp}


def write_results(out: str, name: str, payload: dict[str, Any], table: str) -> None:
  """Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (every benchmark's result files)."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(table + "\n")


def default_data_dir() -> str | None:
  """``$OPTAX_NOWCAST_DATA_DIR`` if set, else this workplace's ``../shared/data`` if present, else None."""
  if os.environ.get("OPTAX_NOWCAST_DATA_DIR"):
    return os.environ["OPTAX_NOWCAST_DATA_DIR"]
  shared = os.path.join(os.path.dirname(REPO), "shared", "data")
  return shared if os.path.isdir(shared) else None


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", default=None, choices=sorted(SUITES),
                      help="default: full (quick with --quick)")
  parser.add_argument("--quick", action="store_true", help="the CI smoke suite: 300 steps, 1 seed")
  parser.add_argument("--tasks", default=None, help=f"comma-separated, from {sorted(TASKS)}")
  parser.add_argument("--methods", default="adam,linefit,linefit+", help=f"from {sorted(METHODS)}")
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  parser.add_argument("--data-dir", default=None,
                      help="folder with fashion-mnist/, cifar10/, tiny_shakespeare/")
  parser.add_argument("--nino-weights", default=None, help="the official NiNo checkpoint, for --methods nino")
  parser.add_argument("--force", action="store_true", help="recompute finished runs")
  parser.add_argument("--only-seeds", default=None,
                      help="comma-separated seeds to compute in this process (split a suite across cores)")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  if args.nino_weights:
    os.environ["OPTAX_NOWCAST_NINO_WEIGHTS"] = args.nino_weights
  suite = args.suite or ("quick" if args.quick else "full")
  s, tasks, seeds = SUITES[suite]
  tasks = args.tasks.split(",") if args.tasks else tasks
  seeds = args.seeds or seeds
  t0 = time.perf_counter()
  res = run_suite(suite, tasks, args.methods.split(","), seeds, s, args.out,
                  args.data_dir or default_data_dir(), args.force, args.quiet,
                  [int(k) for k in args.only_seeds.split(",")] if args.only_seeds else None)
  print(res["table"])
  print(f"\n{res['computed']} runs computed, {res['reused']} reused, {time.perf_counter() - t0:.0f} s; wrote "
        f"{args.out}/{suite}.json, .md and {suite}_<task>.png")
  return res


if __name__ == "__main__":
  main()
