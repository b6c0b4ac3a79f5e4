"""Training predictors on collected trajectories (``optax_nowcast.metatrain.collect``).

Windows: ``ctx`` consecutive saved states ``w_t .. w_{t+ctx-1}`` of a run (the spacing of the collection is
the nowcast ``interval``) and the targets ``w_{t+ctx-1+k}``, ``k = 1..K``, masked where the run ends.
Scaling is NiNo's, per parameter tensor over the window: inputs ``(w - mu) / (sigma + eps)``, targets the
scaled deltas ``(w_{t+ctx-1+k} - w_{t+ctx-1}) / (sigma + eps)``; the loss is their masked mean absolute error.
Runs are split into training and validation by trajectory. AdamW with cosine decay and gradient clipping.

Implemented for WNN+ (per parameter element, with the element's edge type from the neural graph); the graph
models (NiNo) reuse the same windows. :func:`train_wnn` trains Jang et al.'s three WNN models (conv kernels,
dense kernels, 1-D parameters) on windows of 5 states and the state 5 intervals after the last one, with
the authors' normalisation; :func:`train_lfd_on_runs` fits LFD-2 ``[w_t, w_{t+n}] -> w_{t+n+1..t+n+m}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import graphs as graphs_lib
from optax_nowcast import pretrained, weights_io
from optax_nowcast.metatrain.collect import load_run, task_template
from optax_nowcast.predictors import lfd as lfd_lib
from optax_nowcast.predictors.wnn import WNN, WNNPlus, element_edge_types, wnn_kind, wnn_normalise

WNN_KINDS = ("conv", "dense", "bias")


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
    kind = [WNN_KINDS.index(wnn_kind(m["shape"])) for m in self.meta["leaves"]]
    self.kind = np.concatenate([np.full(m["size"], k, np.int8) for k, m in zip(kind, self.meta["leaves"],
                                                                                strict=True)])
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


def tensor_scaling(window: np.ndarray, group: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """NiNo's per-tensor mean and std (ddof 1) over a window ``(ctx, P)``, broadcast to every element:
  ``group[i]`` is the params leaf of flat element ``i``. Returns ``(mu, sigma)``, each ``(P,)``."""
  counts = np.bincount(group, minlength=num_groups) * window.shape[0]
  mu = np.bincount(group, window.sum(0), num_groups) / counts
  sq = ((window - mu[group]) ** 2).sum(0)
  var = np.bincount(group, sq, num_groups) / np.maximum(counts - 1, 1)
  return mu[group], np.sqrt(var)[group]


def sample_window(traj: Trajectory, rng: np.random.Generator, cfg: TrainConfig, eps: float = 1e-6):
  """One window: inputs (n, ctx), targets (n, K), mask (K,), edge types (n,) for n sampled elements."""
  t_max = traj.states.shape[0] - cfg.ctx - 1
  t = int(rng.integers(0, t_max + 1))
  window = np.asarray(traj.states[t: t + cfg.ctx], np.float32)  # (ctx, P)
  idx = rng.choice(window.shape[1], min(cfg.elements_per_window, window.shape[1]), replace=False)
  future = traj.states[t + cfg.ctx: t + cfg.ctx + cfg.horizons][:, idx].astype(np.float32)  # (<=K, n)
  mu, sigma = tensor_scaling(window, traj.group, traj.num_groups)
  x = ((window[:, idx] - mu[idx]) / (sigma[idx] + eps)).T
  y = np.zeros((len(idx), cfg.horizons), np.float32)
  y[:, : len(future)] = ((future - window[-1, idx]) / (sigma[idx] + eps)).T
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
  train_trajs, val_trajs = _split(run_folders, cfg, rng)
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


def _split(run_folders: Sequence[str], cfg: TrainConfig, rng: np.random.Generator):
  folders = list(run_folders)
  rng.shuffle(folders)
  n_val = max(1, int(round(cfg.val_fraction * len(folders)))) if len(folders) > 1 else 0
  val, train = [Trajectory(f) for f in folders[:n_val]], [Trajectory(f) for f in folders[n_val:]]
  if not train:
    raise ValueError("no training trajectories: collect some first "
                     "(python -m optax_nowcast.metatrain collect).")
  return train, val


def sample_wnn_batch(trajs: Sequence[Trajectory], rng: np.random.Generator, cfg: TrainConfig,
                     skip: int = 5):
  """WNN windows: per kind (conv, dense, bias) ``elements_per_window`` coordinates drawn from
  ``windows_per_batch`` windows: normalised states ``x (3, n, 5)``, diffs ``d (3, n, 4)``, targets
  ``y (3, n)`` = ``(w_{4+skip} - w_4) / scale`` clipped to [-1, 1] and a per-kind weight (0 where no
  window had that kind)."""
  ws, ys, kinds = [], [], []
  for _ in range(cfg.windows_per_batch):
    tr = trajs[int(rng.integers(len(trajs)))]
    t = int(rng.integers(0, tr.states.shape[0] - 4 - skip))
    idx = rng.choice(tr.states.shape[1], min(cfg.elements_per_window, tr.states.shape[1]), replace=False)
    rows = tr.states[t: t + 5 + skip][:, idx].astype(np.float32)
    ws.append(rows[:5].T)
    ys.append(rows[4 + skip])
    kinds.append(tr.kind[idx])
  w, y_raw, kind = np.concatenate(ws), np.concatenate(ys), np.concatenate(kinds)
  n = cfg.elements_per_window
  xs, ds, ts, weight = [], [], [], []
  for k in range(len(WNN_KINDS)):
    pool = np.flatnonzero(kind == k)
    pick = rng.choice(pool, n, replace=len(pool) < n) if len(pool) else np.zeros(n, np.int64)
    x, d, scale = (np.asarray(a) for a in wnn_normalise(jnp.asarray(w[pick])))
    xs.append(x)
    ds.append(d)
    # tanh bounds the output to (-1, 1): clipping the target there leaves the L1 gradient unchanged and
    # keeps rare outliers (a flat window followed by a move) from dominating the reported loss.
    ts.append(np.clip((y_raw[pick] - w[pick, -1]) / scale, -1.0, 1.0))
    weight.append(float(len(pool) > 0))
  return (jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ds)), jnp.asarray(np.stack(ts)),
          jnp.asarray(weight, jnp.float32))


def train_wnn(run_folders: Sequence[str], cfg: TrainConfig, out_dir: str | None = None,
              log=print) -> dict[str, Any]:
  """Trains the three WNN models (conv, dense, bias) on the runs with the authors' L1 loss.

  Returns ``{"params": {"conv", "dense", "bias"}, "val_loss", ...}`` (the params :func:`~optax_nowcast.
  predictors.wnn` takes); the validation loss is the mean over kinds of the normalised-residual L1.
  """
  rng = np.random.default_rng(cfg.seed)
  train_trajs, val_trajs = _split(run_folders, cfg, rng)
  model = WNN()
  keys = jax.random.split(jax.random.PRNGKey(cfg.seed), len(WNN_KINDS))
  stacked = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 5)), jnp.zeros((1, 4))))(keys)
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))
  opt_state = tx.init(stacked)

  def per_kind(p, x, d, y):
    return jnp.mean(jnp.abs(model.apply(p, x, d) - y))

  def loss_fn(p, x, d, y, weight):
    losses = jax.vmap(per_kind)(p, x, d, y)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0), losses

  @jax.jit
  def step(p, o, batch):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, *batch)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  evaluate = jax.jit(loss_fn)
  val_rng = np.random.default_rng(cfg.seed + 1)
  val_batches = [sample_wnn_batch(val_trajs, val_rng, cfg) for _ in range(4)] if val_trajs else []

  def val_loss(p):
    if not val_batches:
      return float("nan"), [float("nan")] * len(WNN_KINDS)
    per = np.stack([np.asarray(evaluate(p, *b)[1]) for b in val_batches])
    w = np.stack([np.asarray(b[3]) for b in val_batches])
    kinds = np.where(w.sum(0) > 0, (per * w).sum(0) / np.maximum(w.sum(0), 1), np.nan)
    return float(np.nanmean(kinds)), kinds.tolist()

  history, t0 = [], time.perf_counter()
  initial_val = val_loss(stacked)[0]
  for s in range(1, cfg.steps + 1):
    stacked, opt_state, loss = step(stacked, opt_state, sample_wnn_batch(train_trajs, rng, cfg))
    if s % max(1, cfg.steps // 10) == 0 or s == cfg.steps:
      v, per = val_loss(stacked)
      history.append({"step": s, "train_loss": float(loss), "val_loss": v,
                      "val_loss_by_kind": {k: (None if np.isnan(v) else v)
                                           for k, v in zip(WNN_KINDS, per, strict=True)}})
      log(f"step {s}/{cfg.steps}: train L1 {float(loss):.4f}, val L1 {v:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
  params = {k: jax.tree.map(lambda x, i=i: x[i], stacked) for i, k in enumerate(WNN_KINDS)}
  result = {"params": params, "config": {"ctx": 5, "skip": 5}, "initial_val_loss": initial_val,
            "val_loss": history[-1]["val_loss"], "history": history, "train_runs": len(train_trajs),
            "val_runs": len(val_trajs), "seconds": time.perf_counter() - t0,
            "train_config": dataclasses.asdict(cfg)}
  if out_dir is not None:
    save_predictor(out_dir, "wnn", result)
  return result


def lfd_sequences(trajs: Sequence[Trajectory], spec: lfd_lib.LFDSpec, coords: int,
                  rng: np.random.Generator) -> np.ndarray:
  """``(S, coords, n + 1 + m)`` sequences: every start ``t`` of every run, ``coords`` random coordinates."""
  length = spec.n + 1 + spec.m
  out = []
  for tr in trajs:
    for t in range(tr.states.shape[0] - length + 1):
      idx = np.sort(rng.choice(tr.states.shape[1], min(coords, tr.states.shape[1]), replace=False))
      out.append(np.asarray(tr.states[t: t + length], np.float32)[:, idx].T)
  if not out:
    raise ValueError(f"LFD sequences need runs with at least n + 1 + m = {length} saved states.")
  n = min(o.shape[0] for o in out)
  return np.stack([o[:n] for o in out])


def train_lfd_on_runs(run_folders: Sequence[str], cfg: TrainConfig, *, kind: str = "lfd2", n: int = 5,
                      m: int = 40, beta: float = 1e-6, coords: int = 256, out_dir: str | None = None,
                      log=print) -> dict[str, Any]:
  """Fits LFD-2 (or LFN/LFL/LFS) on collected runs: ``n`` and ``m`` in units of the saved spacing.

  Sequences start at every saved state that leaves room for ``n + 1 + m`` states; ``coords`` coordinates
  per sequence; the paper's recipe (Adam, batch 32 sequences, early stopping on validation MAE).
  """
  rng = np.random.default_rng(cfg.seed)
  train_trajs, val_trajs = _split(run_folders, cfg, rng)
  spec = lfd_lib.lfd_spec(kind, n=n, m=m)
  train = lfd_sequences(train_trajs, spec, coords, rng)
  val = lfd_sequences(val_trajs or train_trajs, spec, coords, rng)
  t0 = time.perf_counter()
  init_mae = float(np.mean(np.abs(val[..., spec.n: spec.n + 1] - val[..., spec.n + 1:])))
  res = lfd_lib.train_lfd(spec, train, val, beta=beta, max_steps=cfg.steps, seed=cfg.seed)
  log(f"{kind}: {train.shape[0]} training sequences; validation MAE {init_mae:.5f} (repeat the last state) "
      f"-> {res.best_val_mae:.5f} after {res.steps} steps")
  result = {"params": res.params, "config": {"kind": kind, "n": n, "m": m},
            "initial_val_loss": init_mae, "val_loss": res.best_val_mae, "steps": res.steps,
            "train_runs": len(train_trajs), "val_runs": len(val_trajs), "seconds": time.perf_counter() - t0,
            "train_config": dataclasses.asdict(cfg), "beta": beta, "coords": coords}
  if out_dir is not None:
    save_predictor(out_dir, kind, result)
  return result


def save_predictor(out_dir: str, name: str, result: dict[str, Any]) -> str:
  """Writes ``<name>.msgpack`` (Flax serialization) and ``<name>.json`` (config and training record)."""
  return weights_io.write(out_dir, name, result["params"], {k: v for k, v in result.items() if k != "params"})


def load_predictor_params(path: str) -> tuple[Any, dict[str, Any]]:
  """``(params, config)`` saved by :func:`save_predictor` (``path`` is the ``.msgpack`` file; the
  ``.json`` next to it names the predictor and holds its config)."""
  return pretrained.load_file(path)


__all__ = ["TrainConfig", "Trajectory", "find_runs", "lfd_sequences", "load_predictor_params",
           "sample_window", "sample_wnn_batch", "save_predictor", "train_lfd_on_runs", "train_wnn",
           "train_wnn_plus"]
