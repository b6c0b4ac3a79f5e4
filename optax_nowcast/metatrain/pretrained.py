"""The recipe behind the weights in ``optax_nowcast/pretrained``, and the one command that reruns it.

    python -m optax_nowcast.metatrain pretrained [--runs trajectories] [--out optax_nowcast/pretrained]

collects the trajectories of :data:`RECIPE` (resumable: finished runs are kept), trains WNN+, WNN and
LFD-2 on them with :data:`TRAIN` and writes the weights, their ``.json`` records and ``MODEL_CARD.md``.
The held-out evaluation tasks (FM-32, C10-32, LM-3-64) are never collected here.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Any

import numpy as np

from optax_nowcast.metatrain.collect import collect, estimate_bytes, plan_runs, runs_summary
from optax_nowcast.metatrain.train import (
  TrainConfig,
  find_runs,
  save_predictor,
  train_lfd_on_runs,
  train_wnn,
  train_wnn_plus,
)
from optax_nowcast.metatrain.train_nino import NiNoTrainConfig, train_nino

INTERVAL = 200  # NiNo's spacing of saved states; k counts these
HELD_OUT = ("FM-32", "C10-32", "LM-3-64")
# (task, seeds, learning-rate multipliers, steps, runs vmapped together): in-distribution tasks only.
RECIPE: tuple[tuple[str, tuple[int, ...], tuple[float, ...], int, int], ...] = (
    ("digits", (1000, 1001, 1002, 1003), (0.5, 1.0, 2.0), 4000, 12),
    ("FM-16", (1000, 1001), (0.5, 1.0, 2.0), 10_000, 3),
    ("LM-3-24", (1000,), (0.5, 1.0, 2.0), 10_000, 3),
    ("LM-2-32", (1000,), (0.5, 1.0, 2.0), 10_000, 3),
    ("C10-16", (1000, 1001), (0.5, 1.0, 2.0), 10_000, 3),
)
TRAIN = {
    "wnn_plus": TrainConfig(steps=4000, hidden=128, horizons=40, elements_per_window=512),
    "wnn": TrainConfig(steps=4000, elements_per_window=512),
    "lfd2": TrainConfig(steps=6000),
}
LFD = {"n": 5, "m": 40, "coords": 512}
NINO = NiNoTrainConfig(steps=2000, windows_per_batch=4)  # = `train --predictor nino --steps 2000`
NAMES = ("wnn_plus", "wnn", "lfd2", "nino")


def collect_recipe(runs_root: str, data_dir: str | None = None, quiet: bool = False) -> None:
  for task, seeds, lrs, steps, vmap in RECIPE:
    plan = plan_runs(seeds, lrs)
    size = estimate_bytes(task, plan, steps, INTERVAL)
    print(f"{task}: {len(plan)} runs x {steps} steps, {size / 2**20:.1f} MiB", flush=True)
    collect(task, plan, steps=steps, interval=INTERVAL, out_dir=runs_root, data_dir=data_dir, vmap=vmap,
            quiet=quiet)


def write_model_card(out_dir: str, folders: list[str], records: dict[str, dict[str, Any]]) -> str:
  """``MODEL_CARD.md`` from the training records (``<name>.json``) and the runs they were trained on.

  The training-data table lists every task some record was trained on (each record keeps its ``data``),
  then any further task among ``folders``; ``folders`` may be empty to rewrite the card from the records.
  """
  runs = {d["task"]: d for rec in records.values() for d in rec.get("data", [])}
  runs = list(runs.values()) + [d for d in runs_summary(folders) if d["task"] not in runs]
  lines = ["# Pretrained predictors of optax_nowcast", "",
           "Trained by this project on its own trajectories, with the command below. Weights: Flax msgpack "
           "(`<name>.msgpack`); config and full training record: `<name>.json`. Loaded by default by "
           "`predictors.wnn_plus()`, `predictors.wnn()`, `predictors.lfd2()` and `predictors.nino()`; "
           "`optax_nowcast.pretrained.load(name)` returns `(params, config)`.", "",
           "## Regenerate", "", "```bash",
           "OPTAX_NOWCAST_DATA_DIR=../shared/data \\",
           "  python -m optax_nowcast.metatrain pretrained --runs trajectories \\",
           "  --out optax_nowcast/pretrained",
           "```", "",
           "The data is found where the loaders look (Fashion-MNIST from the Debian package "
           "`dataset-fashion-mnist`; `cifar10/` and `tiny_shakespeare/` under `OPTAX_NOWCAST_DATA_DIR` or "
           "`--data-dir`).", "",
           f"Collection is resumable; states are saved every {INTERVAL} steps in float16 "
           f"(`k` = horizon in units of {INTERVAL} steps). Held out (never collected here, used to "
           f"evaluate): {', '.join(HELD_OUT)}.", "",
           "The command above retrains WNN+, WNN and LFD-2. NiNo is the slow one (about an hour on one "
           "CPU core); it trains on the same runs with:", "", "```bash",
           "python -m optax_nowcast.metatrain pretrained --runs trajectories \\",
           "  --out optax_nowcast/pretrained --skip-collect --only nino",
           "```", "",
           "or, with checkpoints and a time budget per call (run it again to resume), "
           "`python -m optax_nowcast.metatrain train --predictor nino --runs trajectories --out DIR "
           "--steps 2000 --budget-minutes 50`, then copy `DIR/nino.*` here.", "",
           "## Training data", "",
           "| task | runs | steps per run | saved states | parameters | learning rates |",
           "|---|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r['task']} | {r['runs']} | {r['steps']} | {r['states']} | {r['params']:,} | "
                 f"{', '.join(f'{x:g}' for x in r['lr'])} |")
  lines += ["", f"{sum(r['runs'] for r in runs)} trajectories in all; runs are split into training and "
            "validation by trajectory (20 % validation).", "", "## Models", "",
            "| name | parameters | what it predicts | trained on | training steps | "
            "validation loss (start -> end) | train / val runs | training wall time |",
            "|---|---|---|---|---|---|---|---|"]
  what = {"wnn_plus": "per-element MLP, NiNo scaling, horizons 1..40 (masked L1 on scaled deltas)",
          "wnn": "Jang et al.'s 3 models (conv, dense, 1-D), 5 states -> 5 intervals ahead (L1, authors' "
                 "normalisation)",
          "lfd2": f"[w_t, w_(t+{LFD['n']})] -> next {LFD['m']} states (MAE in parameter units; start = "
                  "repeating the last state)",
          "nino": "NiNo's graph network on whole neural graphs, horizons 1..40 (masked L1 on scaled deltas)"}
  for name, rec in records.items():
    n_params = rec.get("n_params", "")
    steps = rec.get("steps", rec.get("train_config", {}).get("steps"))
    lines.append(f"| `{name}` | {n_params:,} | {what.get(name, '')} | {_trained_on(rec)} | {steps} | "
                 f"{rec['initial_val_loss']:.4g} -> {rec['val_loss']:.4g} | {rec['train_runs']} / "
                 f"{rec['val_runs']} | {rec['seconds']:.0f} s |")
  recipe = [t for t, *_ in RECIPE]
  by_missing: dict[tuple[str, ...], list[str]] = {}
  for name, rec in records.items():
    tasks = {d["task"] for d in rec.get("data", [])}
    by_missing.setdefault(tuple(t for t in recipe if t not in tasks), []).append(f"`{name}`")
  for missing, names in by_missing.items():
    if missing:
      lines += ["", f"{', '.join(names)}: trained before {', '.join(missing)} joined the recipe "
                "(`metatrain.pretrained.RECIPE`); the command above retrains on every task of the recipe."]
  lines += ["", "## Files", "", "`weights_io.read` checks each file's sha256 (kept in its `.json`) at load.",
            "", "| file | sha256 |", "|---|---|"]
  lines += [f"| `{name}.msgpack` | `{rec['sha256']}` |" for name, rec in records.items() if "sha256" in rec]
  lines += ["", f"Trained on {platform.machine()} CPU ({os.cpu_count()} cores); "
            f"card written {time.strftime('%Y-%m-%d')}. WNN's per-kind validation L1 and every evaluation "
            "are in `wnn.json`.", "", "## Intended use and limits", "",
            "- Nowcasting Adam/AdamW training of small CNNs, MLPs and GPT-style transformers with states "
            f"recorded every {INTERVAL} steps (`nowcast(..., interval=200, ctx=5)`; LFD-2 with "
            f"`farcast(..., n={LFD['n']}, unit=200)`).",
            "- Trained on few, small models: expect weaker jumps on very different architectures or "
            "optimizers; `nowcast`'s `max_jump_ratio` and `rollback_factor` guard against bad jumps.",
            "- Benchmark figures (steps to Adam's target) are in the README and `benchmarks/results/`."]
  path = os.path.join(out_dir, "MODEL_CARD.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _trained_on(rec: dict[str, Any]) -> str:
  data = rec.get("data", [])
  return f"{', '.join(d['task'] for d in data)} ({sum(d['runs'] for d in data)} runs)"


def _n_params(params) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def refresh_card(out_dir: str) -> str:
  """Records each shipped file's sha256 in its ``.json`` (where missing) and rewrites ``MODEL_CARD.md``
  from the records (``python -m optax_nowcast.metatrain card``)."""
  records = {}
  for name in NAMES:
    p = os.path.join(out_dir, f"{name}.json")
    if not os.path.exists(p):
      continue
    with open(p) as f:
      rec = json.load(f)
    with open(os.path.join(out_dir, f"{name}.msgpack"), "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if rec.get("sha256") not in (None, digest):
      raise ValueError(f"{out_dir}/{name}.msgpack: sha256 {digest} differs from its record's "
                       f"{rec['sha256']}; retrain it or restore the file.")
    if rec.get("sha256") is None:
      rec["sha256"] = digest
      with open(p, "w") as f:
        json.dump(rec, f, indent=1)
    records[name] = rec
  return write_model_card(out_dir, [], records)


def run(runs_root: str, out_dir: str, data_dir: str | None = None, skip_collect: bool = False,
        only: tuple[str, ...] = ("wnn_plus", "wnn", "lfd2")) -> dict[str, dict[str, Any]]:
  if not skip_collect:
    collect_recipe(runs_root, data_dir)
  tasks = [t for t, *_ in RECIPE]
  folders = find_runs(runs_root, tasks)
  log = lambda m: print(m, flush=True)  # noqa: E731
  records: dict[str, dict[str, Any]] = {}
  for name in only:
    log(f"--- training {name} on {len(folders)} runs")
    if name == "wnn_plus":
      res = train_wnn_plus(folders, TRAIN[name], log=log)
    elif name == "wnn":
      res = train_wnn(folders, TRAIN[name], log=log)
    elif name == "nino":
      res = train_nino(folders, NINO, log=log)
    else:
      res = train_lfd_on_runs(folders, TRAIN[name], n=LFD["n"], m=LFD["m"], coords=LFD["coords"], log=log)
    res["n_params"] = _n_params(res["params"]) if name != "wnn" else _n_params(res["params"]["dense"])
    res["data"] = runs_summary(folders)
    save_predictor(out_dir, name, res)
    with open(os.path.join(out_dir, f"{name}.json")) as f:
      records[name] = json.load(f)  # the record as written, with the file's sha256
  # Keep the records of predictors not retrained this time in the card.
  for name in NAMES:
    p = os.path.join(out_dir, f"{name}.json")
    if name not in records and os.path.exists(p):
      with open(p) as f:
        records[name] = json.load(f)
  write_model_card(out_dir, folders, {k: records[k] for k in NAMES if k in records})
  return records


__all__ = ["HELD_OUT", "INTERVAL", "LFD", "NAMES", "NINO", "RECIPE", "TRAIN", "collect_recipe",
           "refresh_card", "run", "write_model_card"]
