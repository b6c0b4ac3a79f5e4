"""Training predictors on collected trajectories (``optax_nowcast.metatrain.collect``).

Windows: ``ctx`` consecutive saved states ``w_t .. w_{t+ctx-1}`` of a run (the spacing of the collection is
the nowcast ``interval``) and the targets ``w_{t+ctx-1+k}``, ``k = 1..K``, masked where the run ends.
Scaling is NiNo's, per parameter tensor over the window: inputs ``(w - mu) / (sigma + eps)``, targets the
scaled deltas ``(w_{t+ctx-1+k} - w_{t+ctx-1}) / (sigma + eps)``; the loss is their masked mean absolute error.
Runs are split into training and validation by trajectory. AdamW with cosine decay and gradient clipping.

Implemented for WNN+ (per parameter element, with the element's edge type from the neural graph); the graph
models (NiNo) reuse the same windows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import graphs as graphs_lib
from optax_nowcast.metatrain.collect import load_run, task_template
from optax_nowcast.predictors.wnn import WNNPlus, element_edge_types


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  ctx: int = 5
  horizons: int = 40
  hidden: int = 128
  layers: int = 3
  steps: int = 2000
  learning_rate: float = 3e-3
  weight_decay: float = 1e-2
  clip: float = 5.0
  windows_per_batch: int = 16  # NiNo: 4 trajectories x 4 windows
  elements_per_window: int = 2048  # parameter elements sampled from each window
  val_fraction: float = 0.2
  seed: int = 0


class Trajectory:
  """A collected run with the per-element scaling groups and edge types its windows need."""

  def __init__(self, folder: str):
    self.states, self.meta = load_run(folder)
    spec = self.meta["spec"]
    template = task_template(spec)
    graph = graphs_lib.neural_graph(template)
    types = element_edge_types(graph)
    self.types = np.concatenate([t.reshape(-1) for t in types]).astype(np.int32)
    self.group = np.concatenate([np.full(m["size"], i, np.int32) for i, m in enumerate(self.meta["leaves"])])
    self.num_groups = len(self.meta["leaves"])
    if self.types.shape[0] != self.states.shape[1]:
      raise ValueError(f"{folder}: {self.states.shape[1]} saved parameters, the graph has {len(self.types)}.")


def find_runs(root: str, tasks: Sequence[str] | None = None) -> list[str]:
  out = []
  for task in sorted(os.listdir(root)):
    if tasks is not None and task not in tasks:
      continue
    for run in sorted(os.listdir(os.path.join(root, task))):
      idx = os.path.join(root, task, run, "index.json")
      if os.path.exists(idx):
        with open(idx) as f:
          if json.load(f).get("complete"):
            out.append(os.path.join(root, task, run))
  return out


def sample_window(traj: Trajectory, rng: np.random.Generator, cfg: TrainConfig, eps: float = 1e-6):
  """One window: inputs (n, ctx), targets (n, K), mask (K,), edge types (n,) for n sampled elements."""
  t_max = traj.states.shape[0] - cfg.ctx - 1
  t = int(rng.integers(0, t_max + 1))
  window = np.asarray(traj.states[t: t + cfg.ctx], np.float32)  # (ctx, P)
  future = np.asarray(traj.states[t + cfg.ctx: t + cfg.ctx + cfg.horizons], np.float32)  # (<=K, P)
  # Per-tensor mean and std (ddof 1) over the window's states and elements.
  counts = np.bincount(traj.group, minlength=traj.num_groups) * cfg.ctx
  mu = np.bincount(traj.group, window.sum(0), traj.num_groups) / counts
  sq = ((window - mu[traj.group]) ** 2).sum(0)
  var = np.bincount(traj.group, sq, traj.num_groups) / np.maximum(counts - 1, 1)
  sigma = np.sqrt(var)[traj.group]
  idx = rng.choice(window.shape[1], min(cfg.elements_per_window, window.shape[1]), replace=False)
  x = ((window[:, idx] - mu[traj.group][idx]) / (sigma[idx] + eps)).T
  y = np.zeros((len(idx), cfg.horizons), np.float32)
  y[:, : len(future)] = ((future[:, idx] - window[-1, idx]) / (sigma[idx] + eps)).T
  mask = (np.arange(cfg.horizons) < len(future)).astype(np.float32)
  return x, y, mask, traj.types[idx]


def _batch(trajs, rng, cfg):
  parts = [sample_window(trajs[int(rng.integers(len(trajs)))], rng, cfg)
           for _ in range(cfg.windows_per_batch)]
  n = min(p[0].shape[0] for p in parts)  # runs of different tasks have different sizes
  x, y, mask, types = (np.stack([p[i][:n] if i != 2 else p[i] for p in parts]) for i in range(4))
  return jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(types)


def train_wnn_plus(run_folders: Sequence[str], cfg: TrainConfig, out_dir: str | None = None,
                   log=print) -> dict[str, Any]:
  """Trains WNN+ on the runs; returns ``{"params", "config", "val_loss", "train_loss", ...}``."""
  rng = np.random.default_rng(cfg.seed)
  folders = list(run_folders)
  rng.shuffle(folders)
  n_val = max(1, int(round(cfg.val_fraction * len(folders)))) if len(folders) > 1 else 0
  val_trajs = [Trajectory(f) for f in folders[:n_val]]
  train_trajs = [Trajectory(f) for f in folders[n_val:]]
  if not train_trajs:
    raise ValueError("no training trajectories: collect some first "
                     "(python -m optax_nowcast.metatrain collect).")
  model = WNNPlus(hidden=cfg.hidden, horizons=cfg.horizons, layers=cfg.layers)
  params = model.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, cfg.ctx)), jnp.zeros((1,), jnp.int32))
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))
  opt_state = tx.init(params)

  def loss_fn(p, x, y, mask, types):
    pred = model.apply(p, x, types)  # (B, n, K)
    err = jnp.abs(pred - y) * mask[:, None, :]
    return jnp.sum(err) / (jnp.sum(mask) * x.shape[1])

  @jax.jit
  def step(p, o, batch):
    loss, g = jax.value_and_grad(loss_fn)(p, *batch)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  evaluate = jax.jit(loss_fn)
  val_rng = np.random.default_rng(cfg.seed + 1)
  val_batches = [_batch(val_trajs, val_rng, cfg) for _ in range(4)] if val_trajs else []

  def val_loss(p):
    return float(np.mean([evaluate(p, *b) for b in val_batches])) if val_batches else float("nan")

  history, t0 = [], time.perf_counter()
  initial_val = val_loss(params)
  for s in range(1, cfg.steps + 1):
    params, opt_state, loss = step(params, opt_state, _batch(train_trajs, rng, cfg))
    if s % max(1, cfg.steps // 10) == 0 or s == cfg.steps:
      v = val_loss(params)
      history.append({"step": s, "train_loss": float(loss), "val_loss": v})
      log(f"step {s}/{cfg.steps}: train L1 {float(loss):.4f}, val L1 {v:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
  result = {"params": params, "config": {"hidden": cfg.hidden, "horizons": cfg.horizons, "layers": cfg.layers,
                                         "ctx": cfg.ctx, "edge_types": graphs_lib.NUM_EDGE_TYPES},
            "initial_val_loss": initial_val, "val_loss": history[-1]["val_loss"], "history": history,
            "train_runs": len(train_trajs), "val_runs": len(val_trajs), "seconds": time.perf_counter() - t0,
            "train_config": dataclasses.asdict(cfg)}
  if out_dir is not None:
    save_predictor(out_dir, "wnn_plus", result)
  return result


def save_predictor(out_dir: str, name: str, result: dict[str, Any]) -> str:
  """Writes ``<name>.msgpack`` (Flax serialization) and ``<name>.json`` (config and training record)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{name}.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(result["params"]))
  meta = {k: v for k, v in result.items() if k != "params"}
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return os.path.join(out_dir, f"{name}.msgpack")


def load_predictor_params(path: str) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` saved by :func:`save_predictor` (``path`` is the ``.msgpack`` file)."""
  with open(path.replace(".msgpack", ".json")) as f:
    meta = json.load(f)
  cfg = meta["config"]
  template = WNNPlus(**{k: v for k, v in cfg.items() if k != "ctx"}).init(
      jax.random.PRNGKey(0), jnp.zeros((1, cfg["ctx"])), jnp.zeros((1,), jnp.int32))
  with open(path, "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  return jax.tree.map(jnp.asarray, params), cfg


__all__ = ["TrainConfig", "Trajectory", "find_runs", "load_predictor_params", "sample_window",
           "save_predictor", "train_wnn_plus"]
