r"""Meta-training NiNo on collected trajectories (the NiNo paper's recipe, on our runs).

A training example is a window of ``ctx`` saved states of one run, on that run's whole neural graph:
edge features are the states scaled per parameter tensor (mean and std over the tensor and the window,
as :func:`~optax_nowcast.predictors.nino.scale_history`), targets the scaled deltas
``(w_{t+ctx-1+k} - w_{t+ctx-1}) / sigma`` for ``k = 1..K`` (masked past the run's end), and the loss
their mean absolute error over the parameter slots (auxiliary edges and empty conv slots are masked).
Node features are the graph's Laplacian PE with a random sign per eigenvector at every step (NiNo's
augmentation). A step averages ``windows_per_batch`` windows of runs of one task (so every task compiles
once); tasks are drawn at random. AdamW with cosine decay and gradient clipping.

>>> cfg = NiNoTrainConfig()
>>> (cfg.hidden, cfg.layers, cfg.horizons, cfg.ctx)
(128, 3, 40, 5)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast import graphs as graphs_lib
from optax_nowcast.metatrain.collect import load_run, task_template
from optax_nowcast.metatrain.train import save_predictor, tensor_scaling
from optax_nowcast.predictors.nino import NiNoGNN, make_graphs_tuple


@dataclasses.dataclass(frozen=True)
class NiNoTrainConfig:
  hidden: int = 128
  layers: int = 3
  ctx: int = 5
  horizons: int = 40
  lpe: int = 8
  steps: int = 2000
  learning_rate: float = 3e-3
  weight_decay: float = 1e-2
  clip: float = 5.0
  windows_per_batch: int = 4
  val_fraction: float = 0.2
  seed: int = 0


class GraphRun:
  """A collected run with its neural graph, node features and the flat element -> (edge, slot) map."""

  def __init__(self, folder: str, cfg: NiNoTrainConfig):
    self.folder = folder
    self.states, self.meta = load_run(folder)
    self.task = self.meta["task"]
    template = task_template(self.meta["spec"])
    self.graph = graphs_lib.neural_graph(template)
    self.feat = graphs_lib.laplacian_pe(self.graph, cfg.lpe)
    pos = [p for p in self.graph.positions if p is not None]
    self.flat_pos = np.concatenate([p.reshape(-1) for p in pos]).astype(np.int64)
    if self.flat_pos.shape[0] != self.states.shape[1]:
      raise ValueError(f"{folder}: {self.states.shape[1]} saved parameters, the graph maps "
                       f"{self.flat_pos.shape[0]}.")
    self.group = np.concatenate([np.full(m["size"], i, np.int32) for i, m in enumerate(self.meta["leaves"])])
    self.num_groups = len(self.meta["leaves"])


def graph_window(run: GraphRun, t: int, cfg: NiNoTrainConfig, slots: int, eps: float = 1e-6):
  """``(x (E, slots*ctx), y (E, slots, K), edge_mask (E, slots), horizon_mask (K,))`` for window ``t``."""
  g, ctx, kk = run.graph, cfg.ctx, cfg.horizons
  window = np.asarray(run.states[t: t + ctx], np.float32)
  future = np.asarray(run.states[t + ctx: t + ctx + kk], np.float32)
  mu, sigma = tensor_scaling(window, run.group, run.num_groups)
  scaled = (window - mu) / (sigma + eps)  # (ctx, P)
  s = g.num_slots
  flat = np.zeros((g.num_edges * s, ctx), np.float32)
  const = np.flatnonzero(g.edge_const)
  flat[const * s] = g.edge_const[const][:, None]
  flat[run.flat_pos] = scaled.T
  x = np.zeros((g.num_edges, slots * ctx), np.float32)
  x[:, : s * ctx] = flat.reshape(g.num_edges, s * ctx)
  yflat = np.zeros((g.num_edges * s, kk), np.float32)
  yflat[run.flat_pos, : len(future)] = ((future - window[-1]) / (sigma + eps)).T
  y = np.zeros((g.num_edges, slots, kk), np.float32)
  y[:, :s] = yflat.reshape(g.num_edges, s, kk)
  mflat = np.zeros(g.num_edges * s, np.float32)
  mflat[run.flat_pos] = 1.0
  m = np.zeros((g.num_edges, slots), np.float32)
  m[:, :s] = mflat.reshape(g.num_edges, s)
  return x, y, m, (np.arange(kk) < len(future)).astype(np.float32)


def train_nino(run_folders: Sequence[str], cfg: NiNoTrainConfig, out_dir: str | None = None,
               log=print) -> dict[str, Any]:
  """Trains :class:`NiNoGNN` on the runs; returns ``{"params", "config", "val_loss", ...}``."""
  rng = np.random.default_rng(cfg.seed)
  runs = [GraphRun(f, cfg) for f in run_folders]
  by_task: dict[str, list[GraphRun]] = {}
  for r in runs:
    by_task.setdefault(r.task, []).append(r)
  train, val = {}, {}
  for task, rs in by_task.items():  # a validation split by trajectory within each task
    order = rng.permutation(len(rs))
    n_val = int(round(cfg.val_fraction * len(rs))) if len(rs) > 2 else 0
    val[task] = [rs[i] for i in order[:n_val]]
    train[task] = [rs[i] for i in order[n_val:]]
  usable = [t for t in train if any(r.states.shape[0] > cfg.ctx for r in train[t])]
  if not usable:
    raise ValueError("no training trajectories with more than ctx saved states.")
  model = NiNoGNN(hidden=cfg.hidden, layers=cfg.layers, ctx=cfg.ctx, horizons=cfg.horizons)
  slots = model.slots
  r0 = train[usable[0]][0]
  x0, *_ = graph_window(r0, 0, cfg, slots)
  params = model.init(jax.random.PRNGKey(cfg.seed), make_graphs_tuple(r0.graph, jnp.asarray(x0), r0.feat))
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))
  opt_state = tx.init(params)
  graphs_of = {t: rs[0].graph for t, rs in by_task.items()}

  def loss_fn(p, task, x, y, m, hm, feat):
    g = graphs_of[task]

    def one(x, y, m, hm, f):
      out = model.apply(p, make_graphs_tuple(g, x, f))  # (E, slots, K)
      err = jnp.abs(out - y) * m[:, :, None] * hm[None, None, :]
      return jnp.sum(err) / (jnp.sum(m) * jnp.maximum(jnp.sum(hm), 1.0))

    return jnp.mean(jax.vmap(one)(x, y, m, hm, feat))

  steps_by_task = {}

  def get_step(task):
    if task not in steps_by_task:
      @jax.jit
      def step(p, o, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, task, *batch)
        u, o = tx.update(grads, o, p)
        return optax.apply_updates(p, u), o, loss
      steps_by_task[task] = (step, jax.jit(lambda p, batch: loss_fn(p, task, *batch)))
    return steps_by_task[task]

  def batch(pool: list[GraphRun], rng, flip=True):
    parts = []
    for _ in range(cfg.windows_per_batch):
      r = pool[int(rng.integers(len(pool)))]
      t = int(rng.integers(0, r.states.shape[0] - cfg.ctx))
      x, y, m, hm = graph_window(r, t, cfg, slots)
      signs = rng.choice([-1.0, 1.0], size=(1, cfg.lpe)) if flip else np.ones((1, cfg.lpe))
      parts.append((x, y, m, hm, (r.feat * signs).astype(np.float32)))
    return tuple(jnp.asarray(np.stack([p[i] for p in parts])) for i in range(5))

  val_rng = np.random.default_rng(cfg.seed + 1)
  val_batches = [(t, batch(val[t], val_rng, flip=False)) for t in val if val[t]
                 for _ in range(2)]

  def val_loss(p):
    if not val_batches:
      return float("nan")
    return float(np.mean([get_step(t)[1](p, b) for t, b in val_batches]))

  t0 = time.perf_counter()
  initial = val_loss(params)
  history = []
  for s in range(1, cfg.steps + 1):
    task = usable[int(rng.integers(len(usable)))]
    params, opt_state, loss = get_step(task)[0](params, opt_state, batch(train[task], rng))
    if s % max(1, cfg.steps // 10) == 0 or s == cfg.steps:
      v = val_loss(params)
      history.append({"step": s, "train_loss": float(loss), "val_loss": v, "task": task})
      log(f"step {s}/{cfg.steps}: train L1 {float(loss):.4f} ({task}), val L1 {v:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
  result = {"params": params,
            "config": {"hidden": cfg.hidden, "layers": cfg.layers, "ctx": cfg.ctx, "horizons": cfg.horizons,
                       "lpe": cfg.lpe},
            "initial_val_loss": initial, "val_loss": history[-1]["val_loss"], "history": history,
            "train_runs": sum(len(v) for v in train.values()), "val_runs": sum(len(v) for v in val.values()),
            "seconds": time.perf_counter() - t0, "train_config": dataclasses.asdict(cfg)}
  if out_dir is not None:
    save_predictor(out_dir, "nino", result)
  return result


__all__ = ["GraphRun", "NiNoTrainConfig", "graph_window", "train_nino"]
