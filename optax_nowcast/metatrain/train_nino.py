r"""Meta-training NiNo on collected trajectories (the NiNo paper's recipe, on our runs).

A training example is a window of ``ctx`` saved states of one run, on that run's whole neural graph:
edge features are the states scaled per parameter tensor (mean and std over the tensor and the window,
as :func:`~optax_nowcast.predictors.nino.scale_history`), targets the scaled deltas
``(w_{t+ctx-1+k} - w_{t+ctx-1}) / sigma`` for ``k = 1..K`` (masked past the run's end), and the loss
their mean absolute error over the parameter slots (auxiliary edges and empty conv slots are masked).
Node features are the graph's Laplacian PE with a random sign per eigenvector at every step (NiNo's
augmentation). A step averages ``windows_per_batch`` windows of runs of one task (so every task compiles
once); tasks are drawn at random. AdamW with cosine decay and gradient clipping.

NiNo++ options: ``head="lstm"``/``"gru"`` (a recurrent head over the horizons) and
``node_features="lpe+centrality"`` (``lpe - 1`` eigenvectors and the eigenvector centrality); both are saved
in the predictor's config, so ``predictors.nino(<file>.msgpack)`` rebuilds the same model.

Fine-tuning: ``init="<file>.msgpack"`` starts from trained weights (e.g. the shipped ones, on runs of a new
task) instead of a random init; the file's model config must match this config's.

Long jobs: with ``out_dir``, the state of training (params, optimizer state, the sampler's random state and
the log) is written to ``<out_dir>/nino.ckpt.msgpack`` every ``checkpoint_every`` steps and when
``time_budget_s`` runs out; calling :func:`train_nino` again with the same config resumes from it and gives
the same weights as an uninterrupted run. A checkpoint of a different config is an error (``resume=False``
starts over).

>>> cfg = NiNoTrainConfig()
>>> (cfg.hidden, cfg.layers, cfg.horizons, cfg.ctx)
(128, 3, 40, 5)
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from optax_nowcast import pretrained
from optax_nowcast.metatrain.collect import load_run, runs_summary, task_template
from optax_nowcast.metatrain.train import save_predictor, tensor_scaling
from optax_nowcast.predictors.nino import NiNoGNN, graph_node_features, make_graphs_tuple


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
  head: str = "mlp"  # "mlp" (NiNo's DMS head), "lstm" or "gru" (NiNo++)
  rnn_hidden: int = 32  # the lstm/gru head's state width
  head_edges: int = 0  # > 0: the loss of a window on this many random parameter edges (0: all)
  node_features: str = "lpe"  # "lpe" or "lpe+centrality" (NiNo++)
  checkpoint_every: int = 100
  init: str = ""  # a NiNo weights file (.msgpack with its .json) to start from instead of a random init

  def __post_init__(self):
    if self.head_edges < 0:
      raise ValueError(f"NiNoTrainConfig: head_edges must be >= 0 (0: every edge), got {self.head_edges}.")
    if self.head not in ("mlp", "lstm", "gru"):
      raise ValueError(f"NiNoTrainConfig: head must be 'mlp', 'lstm' or 'gru', got {self.head!r}.")
    if self.node_features not in ("lpe", "lpe+centrality"):
      raise ValueError("NiNoTrainConfig: node_features must be 'lpe' or 'lpe+centrality', got "
                       f"{self.node_features!r}.")
    for name in ("ctx", "horizons", "lpe", "steps", "windows_per_batch", "checkpoint_every", "rnn_hidden"):
      if getattr(self, name) < 1:
        raise ValueError(f"NiNoTrainConfig: {name} must be >= 1, got {getattr(self, name)}.")


class GraphRun:
  """A collected run with its neural graph, node features and the flat element -> (edge, slot) map."""

  def __init__(self, folder: str, cfg: NiNoTrainConfig):
    self.folder = folder
    self.states, self.meta = load_run(folder)
    self.task = self.meta["task"]
    template = task_template(self.meta["spec"])
    self.graph = graphs_lib.neural_graph(template)
    self.feat = graph_node_features(self.graph, cfg.lpe, cfg.node_features)
    pos = [p for p in self.graph.positions if p is not None]
    self.flat_pos = np.concatenate([p.reshape(-1) for p in pos]).astype(np.int64)
    if self.flat_pos.shape[0] != self.states.shape[1]:
      raise ValueError(f"{folder}: {self.states.shape[1]} saved parameters, the graph maps "
                       f"{self.flat_pos.shape[0]}.")
    self.group = np.concatenate([np.full(m["size"], i, np.int32) for i, m in enumerate(self.meta["leaves"])])
    self.num_groups = len(self.meta["leaves"])


def _init_from(cfg: NiNoTrainConfig, params, rnn: dict[str, int]):
  """The weights of ``cfg.init``, checked against the model ``cfg`` describes."""
  if not os.path.exists(cfg.init):
    raise FileNotFoundError(f"NiNoTrainConfig: init={cfg.init!r} does not exist; pass a NiNo "
                            ".msgpack written by train_nino (with its .json), e.g. "
                            "optax_nowcast/pretrained/nino.msgpack.")
  loaded, config = pretrained.load_file(cfg.init, expect="nino")
  want = {"hidden": cfg.hidden, "layers": cfg.layers, "ctx": cfg.ctx, "horizons": cfg.horizons,
          "lpe": cfg.lpe, "head": cfg.head, "node_features": cfg.node_features, **rnn}
  got = {k: config.get(k, {"head": "mlp", "node_features": "lpe"}.get(k)) for k in want}
  if got != want:
    diff = ", ".join(f"{k}: {got[k]} in the file, {want[k]} here" for k in want if got[k] != want[k])
    raise ValueError(f"NiNoTrainConfig: init={cfg.init!r} is another model ({diff}); train with the file's "
                     "settings (--hidden, --horizons, --lpe, --head, ...) to fine-tune it.")
  return jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), params, loaded)


def _checkpoint_paths(out_dir: str) -> tuple[str, str]:
  return os.path.join(out_dir, "nino.ckpt.msgpack"), os.path.join(out_dir, "nino.ckpt.json")


def _save_checkpoint(out_dir: str, step: int, params, opt_state, rng: np.random.Generator, history: list,
                     seconds: float, initial: float, cfg: NiNoTrainConfig) -> None:
  os.makedirs(out_dir, exist_ok=True)
  blob, meta = _checkpoint_paths(out_dir)
  for path, data in ((blob, flax.serialization.to_bytes({"params": params, "opt_state": opt_state})),
                     (meta, json.dumps({"step": step, "rng": rng.bit_generator.state, "history": history,
                                        "seconds": seconds, "initial_val_loss": initial,
                                        "train_config": dataclasses.asdict(cfg)}).encode())):
    with open(path + ".tmp", "wb") as f:  # written whole, then renamed: a kill never leaves half a file
      f.write(data)
    os.replace(path + ".tmp", path)


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
               log=print, *, resume: bool = True, time_budget_s: float | None = None) -> dict[str, Any]:
  """Trains :class:`NiNoGNN` on the runs; returns ``{"params", "config", "val_loss", ...}``.

  With ``out_dir``, resumes from ``<out_dir>/nino.ckpt.*`` when ``resume`` (see the module docstring).
  ``time_budget_s``: stop after this much training time, checkpoint and return with ``"finished": False``
  (the weights are written only when all ``cfg.steps`` are done).
  """
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
  rnn = {"rnn_hidden": cfg.rnn_hidden} if cfg.head != "mlp" else {}
  model = NiNoGNN(hidden=cfg.hidden, layers=cfg.layers, ctx=cfg.ctx, horizons=cfg.horizons, head=cfg.head,
                  **rnn)
  slots = model.slots
  r0 = train[usable[0]][0]
  x0, *_ = graph_window(r0, 0, cfg, slots)
  params = model.init(jax.random.PRNGKey(cfg.seed), make_graphs_tuple(r0.graph, jnp.asarray(x0), r0.feat))
  if cfg.init:
    params = _init_from(cfg, params, rnn)
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))
  opt_state = tx.init(params)
  # Tasks of one model (its configurations with other optimizers, schedules, rates) share one graph and so
  # one compiled step: keyed by the parameter shapes.
  shape_of = {t: tuple((m["path"], tuple(m["shape"])) for m in rs[0].meta["leaves"])
              for t, rs in by_task.items()}
  graphs_of = {shape_of[t]: rs[0].graph for t, rs in by_task.items()}  # equal graphs for one shape

  def loss_fn(p, key, x, y, m, hm, feat, idx=None):
    g = graphs_of[key]

    def one(x, y, m, hm, f, idx):
      out = model.apply(p, make_graphs_tuple(g, x, f), edges=idx)  # (E or len(idx), slots, K)
      if idx is not None:
        y, m = y[idx], m[idx]
      err = jnp.abs(out - y) * m[:, :, None] * hm[None, None, :]
      return jnp.sum(err) / (jnp.sum(m) * jnp.maximum(jnp.sum(hm), 1.0))

    return jnp.mean(jax.vmap(one)(x, y, m, hm, feat, idx))

  steps_by_shape = {}

  def get_step(task):
    key = shape_of[task]
    if key not in steps_by_shape:
      @jax.jit
      def step(p, o, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, key, *batch)
        u, o = tx.update(grads, o, p)
        return optax.apply_updates(p, u), o, loss
      steps_by_shape[key] = (step, jax.jit(lambda p, batch: loss_fn(p, key, *batch)))
    return steps_by_shape[key]

  def batch(pool: list[GraphRun], rng, flip=True):
    """``windows_per_batch`` windows of one task; in training with ``head_edges``, each window's random
    parameter edges (a sampled estimate of its loss: the head decodes each edge alone)."""
    parts = []
    sample = flip and cfg.head_edges > 0
    for _ in range(cfg.windows_per_batch):
      r = pool[int(rng.integers(len(pool)))]
      t = int(rng.integers(0, r.states.shape[0] - cfg.ctx))
      x, y, m, hm = graph_window(r, t, cfg, slots)
      signs = rng.choice([-1.0, 1.0], size=(1, cfg.lpe)) if flip else np.ones((1, cfg.lpe))
      part = (x, y, m, hm, (r.feat * signs).astype(np.float32))
      if sample:
        masked = np.flatnonzero(m.any(axis=1))
        part += (np.sort(rng.choice(masked, size=min(cfg.head_edges, len(masked)), replace=False)),)
      parts.append(part)
    return tuple(jnp.asarray(np.stack([p[i] for p in parts])) for i in range(len(parts[0])))

  val_rng = np.random.default_rng(cfg.seed + 1)
  val_batches = [(t, batch(val[t], val_rng, flip=False)) for t in val if val[t]
                 for _ in range(2)]

  def val_loss(p):
    if not val_batches:
      return float("nan")
    return float(np.mean([get_step(t)[1](p, b) for t, b in val_batches]))

  start, history, before, initial = 0, [], 0.0, None
  if out_dir is not None and resume and os.path.exists(_checkpoint_paths(out_dir)[1]):
    blob, meta_path = _checkpoint_paths(out_dir)
    with open(meta_path) as f:
      meta = json.load(f)
    if meta["train_config"] != dataclasses.asdict(cfg):
      raise ValueError(f"{meta_path} is a checkpoint of another config ({meta['train_config']}); use the "
                       "same config to resume, another out_dir, or resume=False (--fresh) to start over.")
    with open(blob, "rb") as f:
      restored = flax.serialization.from_bytes({"params": params, "opt_state": opt_state}, f.read())
    params, opt_state = restored["params"], restored["opt_state"]
    rng.bit_generator.state = meta["rng"]
    start, history, before, initial = meta["step"], meta["history"], meta["seconds"], meta["initial_val_loss"]
    log(f"resuming from step {start}/{cfg.steps} ({meta_path})")
  t0 = time.perf_counter()
  if initial is None:
    initial = val_loss(params)
  finished, s = True, start
  for s in range(start + 1, cfg.steps + 1):
    task = usable[int(rng.integers(len(usable)))]
    params, opt_state, loss = get_step(task)[0](params, opt_state, batch(train[task], rng))
    if s % max(1, cfg.steps // 10) == 0 or s == cfg.steps:
      v = val_loss(params)
      history.append({"step": s, "train_loss": float(loss), "val_loss": v, "task": task})
      log(f"step {s}/{cfg.steps}: train L1 {float(loss):.4f} ({task}), val L1 {v:.4f} "
          f"({before + time.perf_counter() - t0:.0f} s)")
    out_of_time = time_budget_s is not None and time.perf_counter() - t0 >= time_budget_s and s < cfg.steps
    if out_dir is not None and (s % cfg.checkpoint_every == 0 or out_of_time):
      _save_checkpoint(out_dir, s, params, opt_state, rng, history, before + time.perf_counter() - t0,
                       initial, cfg)
    if out_of_time:
      finished = False
      log(f"time budget spent at step {s}/{cfg.steps}; run again to resume")
      break
  result = {"params": params,
            "config": {"hidden": cfg.hidden, "layers": cfg.layers, "ctx": cfg.ctx, "horizons": cfg.horizons,
                       "lpe": cfg.lpe, "head": cfg.head, "node_features": cfg.node_features, **rnn},
            "initial_val_loss": initial, "val_loss": history[-1]["val_loss"] if history else float("nan"),
            "history": history, "finished": finished, "step": s,
            "train_runs": sum(len(v) for v in train.values()), "val_runs": sum(len(v) for v in val.values()),
            "seconds": before + time.perf_counter() - t0, "train_config": dataclasses.asdict(cfg),
            "n_params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}
  if cfg.init:  # the start weights by content: ``init`` is a path on the machine that trained
    with open(cfg.init, "rb") as f:
      result["init_sha256"] = hashlib.sha256(f.read()).hexdigest()
  if out_dir is not None and finished:
    result["data"] = runs_summary(list(run_folders))  # the model card's data table
    save_predictor(out_dir, "nino", result)
  return result


__all__ = ["GraphRun", "NiNoTrainConfig", "graph_window", "train_nino"]
