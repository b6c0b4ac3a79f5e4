"""A diverse meta-training recipe in one command: collect, train NiNo and WNN+, write weights and a card.

    python -m optax_nowcast.metatrain recipe --scale gpu --out OUT --dry-run   # the plan, costs measured here
    python -m optax_nowcast.metatrain recipe --scale gpu --out OUT             # on one GPU, under 8 minutes
    python -m optax_nowcast.metatrain recipe --scale cpu --out OUT             # two CPU cores, about an hour
    python -m optax_nowcast.metatrain recipe --scale toy --out OUT             # CPU, about a minute (tested)

The trajectory distribution is the generalization issue's: vision CNNs and MLPs at several widths and
char-level transformers of several shapes (:data:`MODELS`), each trained with several base optimizers and
learning-rate schedules (:data:`OPTIMIZERS`, the schedules of ``TaskSpec.schedule``), seeds and rate
multipliers. Every configuration is disjoint from the generalization suite (``tasks.GENERAL_TASKS``) and
the held-out paper tasks (FM-32, C10-32, LM-3-64): no (kind, dataset, widths) of theirs is collected here
(``tests/test_recipe.py`` checks it). A configuration's runs share a model and so one jitted, vmapped
``lax.scan`` (``collect``); states are saved every ``interval`` steps in float16.

Time is budgeted, so the command ends when its ``budget_s`` (``--budget-minutes``) is spent: collection
takes configurations in plan order until ``collect_fraction`` of it is gone, WNN+ trains for a fixed
number of steps, and NiNo trains on what was collected until the budget is spent (checkpointing every 100
steps and at the end; rerunning resumes). ``OUT`` then holds ``nino.msgpack``/``.json``,
``wnn_plus.msgpack``/``.json``, ``recipe_log.json`` (the plan, what was collected, time per phase) and
``MODEL_CARD.md``; the trajectories go to ``OUT/trajectories`` (``--runs`` to put them elsewhere).

The learning rate of a configuration is its model's Adam rate times :data:`OPTIMIZERS`' factor (Lion
~1/10, SGD ~15x), each run at one of ``lr_scales`` times that.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from optax_nowcast.metatrain.collect import collect, estimate_bytes, plan_runs, runs_summary
from optax_nowcast.metatrain.train import TrainConfig, find_runs, save_predictor, train_wnn_plus
from optax_nowcast.metatrain.train_nino import NiNoTrainConfig, train_nino
from optax_nowcast.tasks import TaskSpec
from optax_nowcast.weights_io import SHIPPED_DIR

# name -> the model and its data: TaskSpec fields, with the Adam learning rate of that model.
MODELS: dict[str, dict[str, Any]] = {
    "digits-MLP32": dict(kind="digits", dataset="digits", features=(32,), batch_size=32, learning_rate=1e-3,
                         val_size=359),
    "digits-MLP128-64": dict(kind="digits", dataset="digits", features=(128, 64), batch_size=32,
                             learning_rate=1e-3, val_size=359),
    "digits-MLP48x3": dict(kind="digits", dataset="digits", features=(48, 48, 48), batch_size=64,
                           learning_rate=1e-3, val_size=359),
    "FM-CNN12": dict(kind="vision", dataset="fashion_mnist", features=(12, 24, 24), batch_size=128,
                     learning_rate=3e-3),
    "FM-CNN20": dict(kind="vision", dataset="fashion_mnist", features=(20, 40, 40), batch_size=64,
                     learning_rate=3e-3),
    "C10-CNN10": dict(kind="vision", dataset="cifar10", features=(10, 20, 20), batch_size=128,
                      learning_rate=3e-3),
    "C10-CNN16": dict(kind="vision", dataset="cifar10", features=(16, 32, 32), batch_size=64,
                      learning_rate=3e-3),
    "FM-MLP128": dict(kind="vision", dataset="fashion_mnist", arch="mlp", features=(128,), batch_size=128,
                      learning_rate=1e-3),
    "LM-1-32": dict(kind="lm", dataset="tiny_shakespeare", lm_shape=(1, 32, 4), batch_size=32,
                    learning_rate=3e-3, val_size=256, metric="perplexity"),
    "LM-2-24": dict(kind="lm", dataset="tiny_shakespeare", lm_shape=(2, 24, 2), batch_size=32,
                    learning_rate=3e-3, val_size=256, metric="perplexity"),
}
# optimizer -> (TaskSpec.optimizer, weight decay, factor on the model's Adam rate)
OPTIMIZERS: dict[str, tuple[str, float, float]] = {
    "adam": ("adam", 0.0, 1.0), "adamw": ("adam", 1e-2, 1.0), "sgd": ("sgd", 0.0, 15.0),
    "nesterov": ("nesterov", 0.0, 15.0), "lion": ("lion", 1e-2, 0.1), "adabelief": ("adabelief", 0.0, 1.0),
}
SCHEDULES = ("constant", "warmup_cosine", "linear", "step")


@dataclasses.dataclass(frozen=True)
class Scale:
  """How much of the distribution a run of the recipe collects and how long it trains."""

  models: tuple[str, ...]
  combos_per_model: int  # (optimizer, schedule) pairs per model, taken in turn from their product
  seeds: tuple[int, ...]
  lr_scales: tuple[float, ...]
  steps: int
  interval: int
  vmap: int
  nino: NiNoTrainConfig
  wnn_plus: TrainConfig
  budget_s: float
  collect_fraction: float = 0.55  # of the budget, at most, for collection


SCALES: dict[str, Scale] = {
    # CPU, about a minute: the whole command end to end on digits (tests/test_recipe.py).
    "toy": Scale(models=("digits-MLP32",), combos_per_model=2, seeds=(0, 1, 2), lr_scales=(1.0,), steps=120,
                 interval=10, vmap=3,
                 nino=NiNoTrainConfig(steps=6, hidden=16, horizons=3, checkpoint_every=3),
                 wnn_plus=TrainConfig(steps=10, hidden=16, horizons=3, elements_per_window=256),
                 budget_s=120.0),
    # Two CPU cores, about an hour: 7 models x 4 (optimizer, schedule) x 3 seeds = 84 runs of 2,000 steps
    # (no 784-input MLP: its graph dominates NiNo's training step here), then the shipped NiNo fine-tuned.
    "cpu": Scale(models=("digits-MLP32", "digits-MLP128-64", "digits-MLP48x3", "FM-CNN12", "C10-CNN10",
                         "LM-1-32", "LM-2-24"), combos_per_model=4, seeds=(0, 1, 2), lr_scales=(1.0,),
                 steps=2000, interval=100, vmap=3,
                 nino=NiNoTrainConfig(steps=600, learning_rate=1e-3, init=os.path.join(SHIPPED_DIR,
                                                                                     "nino.msgpack")),
                 wnn_plus=TrainConfig(steps=2000, hidden=128, horizons=40, elements_per_window=512),
                 budget_s=3600.0, collect_fraction=0.5),
    # One H200, under 8 minutes: 10 models x 4 (optimizer, schedule) x 4 seeds x 2 rates = 320 runs of
    # 4,000 steps (today's shipped NiNo: 24 runs), then NiNo for what is left of the budget.
    "gpu": Scale(models=tuple(MODELS), combos_per_model=4, seeds=(0, 1, 2, 3), lr_scales=(0.5, 1.5),
                 steps=4000, interval=100, vmap=8, nino=NiNoTrainConfig(steps=20_000, windows_per_batch=8),
                 wnn_plus=TrainConfig(steps=4000, hidden=128, horizons=40, elements_per_window=512),
                 budget_s=450.0),
}


def configurations(scale: Scale) -> list[TaskSpec]:
  """The plan's configurations in collection order: each model with ``combos_per_model`` (optimizer,
  schedule) pairs, taken in turn (offset per model) from their product."""
  pairs = list(itertools.product(OPTIMIZERS, SCHEDULES))
  out = []
  for i, name in enumerate(scale.models):
    model = MODELS[name]
    for j in range(scale.combos_per_model):
      opt, sched = pairs[(i * 7 + j * 5) % len(pairs)]
      kind, wd, factor = OPTIMIZERS[opt]
      fields = {k: v for k, v in model.items() if k != "learning_rate"}
      out.append(TaskSpec(name=f"R-{name}-{opt}-{sched}", steps=scale.steps,
                          learning_rate=model["learning_rate"] * factor, weight_decay=wd, optimizer=kind,
                          schedule=sched, **fields))
  # Round-robin over the models, so that a budget cut short still leaves every model some runs.
  by_model = [out[i::scale.combos_per_model] for i in range(scale.combos_per_model)]
  return [s for group in by_model for s in group]


def model_of(spec: TaskSpec) -> str:
  """The :data:`MODELS` entry a configuration of :func:`configurations` trains."""
  return next(m for m in MODELS if spec.name.startswith(f"R-{m}-"))


def plan(scale: Scale) -> list[dict[str, Any]]:
  """One row per configuration: its runs, steps and the bytes of its states."""
  runs = plan_runs(scale.seeds, scale.lr_scales)
  return [{"config": s.name, "model": model_of(s), "spec": s, "runs": len(runs),
           "bytes": estimate_bytes(s, runs, scale.steps, scale.interval)} for s in configurations(scale)]


PROBE_INTERVALS = 7  # a probe run's states: enough for NiNo's windows (ctx 5 + a horizon)


def measure_costs(scale: Scale, data_dir: str | None, out: str,
                  log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
  """Per model (its first configuration): seconds to load and compile, and per training step of one
  vmapped group (the median of its ``interval``-step chunks after the first), measured on this machine by
  collecting ``PROBE_INTERVALS`` intervals."""
  costs = {}
  seen = set()
  for s in configurations(scale):
    model = model_of(s)
    if model in seen:
      continue
    seen.add(model)
    runs = plan_runs(scale.seeds, scale.lr_scales)[: scale.vmap]
    chunks: list[float] = []
    t0 = time.perf_counter()
    collect(dataclasses.replace(s, name=s.name + "-probe"), runs, steps=PROBE_INTERVALS * scale.interval,
            interval=scale.interval, out_dir=out, data_dir=data_dir, vmap=scale.vmap, quiet=True,
            timings=chunks)
    total = time.perf_counter() - t0
    per_step = float(np.median(chunks[1:])) / scale.interval
    setup = total - sum(chunks[1:])  # the data, the model, the compile (in the first chunk), the files
    costs[model] = {"compile_s": max(setup - scale.interval * per_step, 0.0), "s_per_group_step": per_step}
    log(f"  {model}: compile and load {costs[model]['compile_s']:.1f} s, "
        f"{1e3 * per_step:.2f} ms per step of {len(runs)} vmapped runs")
  return costs


def measure_nino_step(scale: Scale, probe_dir: str, config: str) -> float:
  """Seconds per NiNo training step (the scale's config, compile excluded) on the probe runs of one
  configuration: 2 steps, then 8, from scratch each time."""
  folders = find_runs(probe_dir, [config + "-probe"])
  quiet = lambda m: None  # noqa: E731
  short = dataclasses.replace(scale.nino, steps=2, checkpoint_every=1000, horizons=1)
  long = dataclasses.replace(short, steps=8)
  t0 = time.perf_counter()
  train_nino(folders, short, log=quiet)
  t2 = time.perf_counter() - t0
  t0 = time.perf_counter()
  train_nino(folders, long, log=quiet)
  return max(time.perf_counter() - t0 - t2, 1e-9) / 6


def dry_run(scale: Scale, data_dir: str | None, out: str,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Prints the plan and, from costs measured here, how long collecting it would take on this machine."""
  rows = plan(scale)
  log(f"{len(rows)} configurations, {sum(r['runs'] for r in rows)} runs of {scale.steps} steps, a state "
      f"every {scale.interval}: {sum(r['bytes'] for r in rows) / 2**20:.0f} MiB of float16 states")
  for r in rows:
    log(f"  {r['config']}: {r['runs']} runs, {r['bytes'] / 2**20:.1f} MiB")
  log("measured here (one vmapped group per model):")
  costs = measure_costs(scale, data_dir, os.path.join(out, "probe"), log)
  total = 0.0
  for r in rows:
    cost = costs[r["model"]]
    total += cost["compile_s"] + -(-r["runs"] // scale.vmap) * scale.steps * cost["s_per_group_step"]
  log(f"collecting all of it here: about {total / 60:.1f} minutes; the budget is {scale.budget_s / 60:.1f} "
      f"minutes in all, at most {scale.collect_fraction:.0%} of it for collection")
  largest = max(rows, key=lambda r: r["bytes"] / r["runs"])["config"]
  nino_s = measure_nino_step(scale, os.path.join(out, "probe"), largest)
  log(f"one NiNo training step ({scale.nino.windows_per_batch} windows of {largest}, the largest model, "
      f"horizon 1): {nino_s:.2f} s here")
  return {"plan": [{k: v for k, v in r.items() if k != "spec"} for r in rows], "costs": costs,
          "expected_collect_s_here": total, "nino_step_s_here": nino_s, "nino_step_config": largest,
          "budget_s": scale.budget_s, "machine": _machine()}


def format_dry_run(res: dict[str, Any], scale_name: str) -> str:
  """The dry run as a markdown table (``benchmarks/results/recipe_<scale>_dry_run.md``)."""
  plan_rows = res["plan"]
  lines = [f"`python -m optax_nowcast.metatrain recipe --scale {scale_name} --dry-run` on {res['machine']}: "
           f"{len(plan_rows)} configurations, {sum(r['runs'] for r in plan_rows)} runs, "
           f"{sum(r['bytes'] for r in plan_rows) / 2**20:.0f} MiB of float16 states; collecting all of it "
           f"here would take about {res['expected_collect_s_here'] / 60:.1f} minutes (budget on the target "
           f"machine: {res['budget_s'] / 60:.1f} minutes in all). One NiNo training step on "
           f"{res['nino_step_config']} (the largest model): {res['nino_step_s_here']:.2f} s here.", "",
           "| model | compile and data (s) | ms per step of one vmapped group |", "|---|---|---|"]
  lines += [f"| {m} | {c['compile_s']:.1f} | {1e3 * c['s_per_group_step']:.2f} |"
            for m, c in res["costs"].items()]
  lines += ["", "| configuration | runs | MiB |", "|---|---|---|"]
  lines += [f"| {r['config']} | {r['runs']} | {r['bytes'] / 2**20:.1f} |" for r in plan_rows]
  return "\n".join(lines) + "\n"


def _machine() -> str:
  import jax
  dev = jax.devices()[0].device_kind
  return f"{platform.machine()}, {jax.default_backend()} ({dev}), {os.cpu_count()} cores"


def run(scale: Scale, out: str, data_dir: str | None = None, runs_root: str | None = None,
        log: Callable[[str], None] = print,
        command: str = "python -m optax_nowcast.metatrain recipe") -> dict[str, Any]:
  """Collects, trains WNN+ and NiNo within ``scale.budget_s`` and writes the weights, log and card
  (``command``: how this run was asked for, for the card)."""
  t_start = time.perf_counter()
  runs_root = runs_root or os.path.join(out, "trajectories")
  os.makedirs(out, exist_ok=True)
  record: dict[str, Any] = {"command": command, "machine": _machine(), "budget_s": scale.budget_s,
                            "collected": [], "phases": {}}
  runs = plan_runs(scale.seeds, scale.lr_scales)
  for r in plan(scale):
    spent = time.perf_counter() - t_start
    if spent > scale.collect_fraction * scale.budget_s:
      log(f"collection budget spent after {len(record['collected'])} configurations ({spent:.0f} s)")
      break
    t0 = time.perf_counter()
    collect(r["spec"], runs, steps=scale.steps, interval=scale.interval, out_dir=runs_root,
            data_dir=data_dir, vmap=scale.vmap, quiet=True)
    record["collected"].append({"config": r["config"], "runs": r["runs"], "s": time.perf_counter() - t0})
    log(f"collected {r['config']}: {r['runs']} runs in {time.perf_counter() - t0:.1f} s")
  record["phases"]["collect_s"] = time.perf_counter() - t_start
  folders = find_runs(runs_root, [c["config"] for c in record["collected"]])
  data = runs_summary(folders)
  quiet = lambda m: None  # noqa: E731
  t0 = time.perf_counter()
  wnn = train_wnn_plus(folders, scale.wnn_plus, log=quiet)
  wnn["data"] = data
  save_predictor(out, "wnn_plus", wnn)
  record["phases"]["wnn_plus_s"] = time.perf_counter() - t0
  log(f"WNN+: {scale.wnn_plus.steps} steps, validation L1 {wnn['initial_val_loss']:.4f} -> "
      f"{wnn['val_loss']:.4f} ({record['phases']['wnn_plus_s']:.0f} s)")
  t0 = time.perf_counter()
  left = scale.budget_s - (time.perf_counter() - t_start)
  nino = train_nino(folders, scale.nino, out_dir=out, log=log, time_budget_s=max(left, 1.0))
  nino["data"] = data
  save_predictor(out, "nino", nino)
  record["phases"]["nino_s"] = time.perf_counter() - t0
  record["nino_steps"] = nino["step"]
  record["runs"] = len(folders)
  record["total_s"] = time.perf_counter() - t_start
  log(f"NiNo: {nino['step']} steps, validation L1 {nino['initial_val_loss']:.4f} -> {nino['val_loss']:.4f} "
      f"({record['phases']['nino_s']:.0f} s); {len(folders)} runs; {record['total_s']:.0f} s in all")
  with open(os.path.join(out, "recipe_log.json"), "w") as f:
    json.dump(record, f, indent=1)
  _card(out, scale, record, {"wnn_plus": wnn, "nino": nino})
  return record


def _recorded_sha256(out: str, name: str) -> str:
  """The sha256 of ``<name>.msgpack`` that its record (``<name>.json``) holds and loading checks."""
  with open(os.path.join(out, f"{name}.json")) as f:
    return json.load(f)["sha256"]


def _card(out: str, scale: Scale, record: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
  """``MODEL_CARD.md`` of a recipe run: the command, time per phase, the predictors (validation loss and
  each file's sha256) and the runs they were trained on."""
  lines = ["# Predictors of the diverse recipe", "",
           f"Written by `{record['command']} --out OUT` on {record['machine']}, "
           f"{time.strftime('%Y-%m-%d')}; {record['runs']} runs of {scale.steps} steps (a state every "
           f"{scale.interval}), {len(record['collected'])} configurations (models x optimizers x "
           "schedules, disjoint from the generalization suite).", "",
           "| phase | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.0f} |" for k, v in record["phases"].items()]
  lines += ["", "| predictor | training steps | validation L1 (start -> end) | train / val runs | sha256 of "
            "`<predictor>.msgpack` |", "|---|---|---|---|---|"]
  for name, res in results.items():
    lines.append(f"| `{name}` | {res.get('step', scale.wnn_plus.steps)} | {res['initial_val_loss']:.4g} -> "
                 f"{res['val_loss']:.4g} | {res['train_runs']} / {res['val_runs']} | "
                 f"`{_recorded_sha256(out, name)}` |")
  lines += ["", "| configuration | runs | learning rates | parameters |", "|---|---|---|---|"]
  lines += [f"| {d['task']} | {d['runs']} | {', '.join(f'{x:g}' for x in d['lr'])} | {d['params']:,} |"
            for d in results["nino"]["data"]]
  path = os.path.join(out, "MODEL_CARD.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def held_out_clash(scale: Scale) -> list[str]:
  """Configurations of the plan whose model and data are those of a generalization-suite configuration
  or a held-out paper task (the recipe must have none)."""
  from optax_nowcast.tasks import GENERAL_TASKS, TASKS

  def key(s: TaskSpec):
    return (s.kind, s.dataset, tuple(s.features), tuple(s.lm_shape), s.arch)

  banned = {key(s) for s in GENERAL_TASKS.values()} | {key(TASKS[t]) for t in ("FM-32", "C10-32", "LM-3-64")}
  return [s.name for s in configurations(scale) if key(s) in banned]


__all__ = ["MODELS", "OPTIMIZERS", "SCALES", "SCHEDULES", "Scale", "configurations", "dry_run",
           "held_out_clash", "measure_costs", "model_of", "plan", "run"]
