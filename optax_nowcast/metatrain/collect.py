"""Trajectory collection: train a task many times and save its parameter states at a fixed spacing.

Layout on disk, one folder per run (``<out>/<task>/<run_id>/``):

* ``states.npy``: a ``(num_states, num_params)`` array (float16 by default) opened with ``np.load(...,
  mmap_mode="r")`` so that training windows are read lazily; row ``i`` is the flat parameter vector after
  ``steps[i]`` updates (row 0: the initial parameters);
* ``index.json``: the task and its settings (overrides, learning rate, seed), the steps, and for every
  parameter leaf its path, shape and offset in the flat vector; ``"complete": true`` once the run finished.

Runs that share a model shape are trained together: ``vmap`` over runs inside one jitted ``lax.scan``
(each run its own seed, minibatch order and rate multiplier, an injected ``optax.scale``). A finished
run is never recomputed, so an interrupted collection resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast.tasks import TASKS, TaskSpec, make_task


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: a seed, a learning-rate multiplier and ``TaskSpec`` overrides (e.g. widths)."""

  seed: int
  lr_scale: float = 1.0
  overrides: tuple[tuple[str, Any], ...] = ()

  @property
  def run_id(self) -> str:
    tag = hashlib.sha1(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()[:8]
    return f"s{self.seed}_lr{self.lr_scale:g}_{tag}"


def plan_runs(seeds: Sequence[int], lr_scales: Sequence[float] = (1.0,),
              variants: Sequence[dict[str, Any]] = ({},)) -> list[RunSpec]:
  """The cartesian product of seeds, learning-rate multipliers and spec variants.

  >>> [r.run_id for r in plan_runs([0, 1], lr_scales=[0.5, 2.0])]
  ['s0_lr0.5_97d170e1', 's1_lr0.5_97d170e1', 's0_lr2_97d170e1', 's1_lr2_97d170e1']
  >>> plan_runs([0], variants=[{"features": (8, 16, 16)}])[0].overrides
  (('features', (8, 16, 16)),)
  """
  return [RunSpec(s, float(lr), tuple(sorted(v.items())))
          for v in variants for lr in lr_scales for s in seeds]


def _leaf_index(params) -> list[dict[str, Any]]:
  out, offset = [], 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = int(np.prod(np.shape(leaf)))
    out.append({"path": "/".join(str(getattr(k, "key", k)) for k in path), "shape": list(np.shape(leaf)),
                "offset": offset, "size": n})
    offset += n
  return out


def _spec(task: str | TaskSpec) -> TaskSpec:
  if isinstance(task, TaskSpec):
    return task
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}, or pass a TaskSpec.")
  return TASKS[task]


def estimate_bytes(task_name: str | TaskSpec, runs: Sequence[RunSpec], steps: int, interval: int,
                   dtype=np.float16) -> int:
  """Bytes of the states ``collect`` would write (printed before a collection starts).

  >>> estimate_bytes("FM-16", plan_runs([0, 1]), steps=10_000, interval=200) / 2**20  # MiB
  2.797...
  """
  total = 0
  for r in runs:
    spec = dataclasses.replace(_spec(task_name), **dict(r.overrides))
    task_params = _param_count(spec)
    total += (steps // interval + 1) * task_params * np.dtype(dtype).itemsize
  return total


def task_template(spec) -> Any:
  """The params tree (shapes and dtypes only) of a task's model, from its ``TaskSpec`` (or its dict).

  >>> from optax_nowcast.tasks import TASKS
  >>> task_template(TASKS["FM-16"])["params"]["Conv_0"]["kernel"].shape
  (3, 3, 1, 16)
  """
  from optax_nowcast.tasks.tasks import CNN, GPT, MLP, TaskSpec  # shapes only: no data needed
  if isinstance(spec, dict):
    spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
  key = jax.random.PRNGKey(0)
  if spec.kind == "vision":
    chans = 1 if spec.dataset == "fashion_mnist" else 3
    side = 28 if chans == 1 else 32
    model = MLP(spec.features) if spec.arch == "mlp" else CNN(spec.features)
    return jax.eval_shape(model.init, key, jnp.zeros((1, side, side, chans)))
  if spec.kind == "lm":
    layers, dim, heads = spec.lm_shape
    return jax.eval_shape(GPT(65, spec.block_size, layers, dim, heads).init, key,
                          jnp.zeros((1, spec.block_size), jnp.int32))
  return jax.eval_shape(MLP(spec.features).init, key, jnp.zeros((1, 64)))


@functools.lru_cache(maxsize=64)
def _param_count(spec) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(task_template(spec))))


def collect(task_name: str | TaskSpec, runs: Sequence[RunSpec], *, steps: int, interval: int, out_dir: str,
            data_dir: str | None = None, vmap: int = 4, dtype=np.float16, quiet: bool = False,
            shard: tuple[int, int] = (0, 1), timings: list[float] | None = None) -> dict:
  """Trains every run of ``runs`` for ``steps`` steps, saving states every ``interval`` steps.

  ``shard=(i, n)``: this process trains only the runs ``i, i + n, i + 2n, ...`` of ``runs``, so that ``n``
  processes (on one machine or several sharing ``out_dir``) split a collection; each writes its own run
  folders, and each, when done, rewrites ``<out_dir>/<task>/collection.json`` (:func:`write_index`): the
  last to finish leaves the complete index. A process that dies leaves its unfinished runs out of the index;
  rerun it (finished runs are skipped). ``timings``: a list that gets the wall seconds of every
  ``interval``-step chunk of every vmapped group, in order (the first of a group includes its compile).

  Returns ``{"computed": [...run ids], "skipped": [...], "index": path}``. Example:
  :mod:`optax_nowcast.metatrain`.
  """
  if steps % interval:
    raise ValueError(f"steps ({steps}) must be a multiple of interval ({interval}).")
  base_spec = _spec(task_name)
  task_name = base_spec.name
  i, n = shard
  if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
    raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}.")
  all_runs, runs = list(runs), list(runs)[i::n]
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover
    tqdm = None
  todo, skipped = [], []
  for r in runs:
    if _complete(out_dir, task_name, r, steps, interval):
      skipped.append(r.run_id)
      continue
    todo.append(r)
  groups: dict[tuple, list[RunSpec]] = {}
  for r in todo:
    groups.setdefault(r.overrides, []).append(r)
  bar = tqdm(total=len(todo) * steps, unit="step", disable=quiet or not todo) if tqdm else None
  computed = []
  for overrides, group in groups.items():
    task = make_task(base_spec, data_dir, **dict(overrides), steps=steps)
    for start in range(0, len(group), vmap):
      chunk = group[start:start + vmap]
      _train_group(task, chunk, steps, interval, out_dir, dtype, bar, timings)
      computed += [r.run_id for r in chunk]
  if bar is not None:
    bar.close()
  index = write_index(out_dir, task_name, all_runs, steps=steps, interval=interval)
  return {"computed": computed, "skipped": skipped, "index": index}


def _complete(out_dir: str, task_name: str, r: RunSpec, steps: int, interval: int) -> bool:
  idx = os.path.join(out_dir, task_name, r.run_id, "index.json")
  if not os.path.exists(idx):
    return False
  with open(idx) as f:
    meta = json.load(f)
  return bool(meta.get("complete")) and meta["steps"][-1] == steps and meta["interval"] == interval


def write_index(out_dir: str, task_name: str, runs: Sequence[RunSpec], *, steps: int, interval: int) -> str:
  """Writes ``<out_dir>/<task>/collection.json``: the planned runs, which are complete and which missing
  (atomically: several processes may write it; the last one sees every run)."""
  done = [r.run_id for r in runs if _complete(out_dir, task_name, r, steps, interval)]
  record = {"task": task_name, "steps": steps, "interval": interval, "planned": [r.run_id for r in runs],
            "complete": done, "missing": [r.run_id for r in runs if r.run_id not in done]}
  folder = os.path.join(out_dir, task_name)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "collection.json")
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)
  return path


def _group_optimizer(task, group: Sequence[RunSpec], params):
  """The vmapped runs' optimizer and its state: the task's own (``TaskSpec.optimizer``, ``.schedule``)
  followed by an injected ``optax.scale(lr_scale)`` per run. Every base optimizer here is linear in its
  rate (weight decay included), so this is each run at ``lr_scale`` times the task's rate (the schedule's
  peak)."""
  tx = optax.chain(task.optimizer(), optax.inject_hyperparams(optax.scale)(step_size=1.0))
  opt_state = jax.vmap(tx.init)(params)
  opt_state[1].hyperparams["step_size"] = jnp.asarray([r.lr_scale for r in group], jnp.float32)
  return tx, opt_state


def _train_group(task, group: Sequence[RunSpec], steps: int, interval: int, out_dir: str, dtype, bar,
                 timings: list[float] | None = None):
  spec = task.spec
  params = jax.vmap(task.init)(jnp.stack([jax.random.PRNGKey(r.seed) for r in group]))
  tx, opt_state = _group_optimizer(task, group, params)

  def one_run(p, o, idx):
    def step(c, i):
      p, o = c
      g = jax.grad(task.loss)(p, i)
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), None
    (p, o), _ = jax.lax.scan(step, (p, o), idx)
    return p, o

  run_chunk = jax.jit(jax.vmap(one_run), donate_argnums=(0, 1))
  flat = lambda p: np.concatenate([np.asarray(x, np.float32).reshape(len(group), -1)
                                   for x in jax.tree.leaves(p)], axis=1)
  leaves_meta = _leaf_index(jax.tree.map(lambda x: x[0], params))
  n_states = steps // interval + 1
  arrays, folders = [], []
  for r in group:
    folder = os.path.join(out_dir, task.name, r.run_id)
    os.makedirs(folder, exist_ok=True)
    n_params = leaves_meta[-1]["offset"] + leaves_meta[-1]["size"]
    arrays.append(np.lib.format.open_memmap(os.path.join(folder, "states.npy"), mode="w+", dtype=dtype,
                                            shape=(n_states, n_params)))
    folders.append(folder)
  rows = flat(params)
  for a, row in zip(arrays, rows, strict=True):
    a[0] = row
  for s in range(0, steps, interval):
    t0 = time.perf_counter()
    idx = jnp.asarray(np.stack([task.batch_indices(r.seed, s, interval) for r in group]))
    params, opt_state = run_chunk(params, opt_state, idx)
    rows = flat(params)  # on the host: the chunk is done
    if timings is not None:
      timings.append(time.perf_counter() - t0)
    for a, row in zip(arrays, rows, strict=True):
      a[s // interval + 1] = row
    if bar is not None:
      bar.update(interval * len(group))
  for a, folder, r in zip(arrays, folders, group, strict=True):
    a.flush()
    meta = {"task": task.name, "spec": dataclasses.asdict(spec), "seed": r.seed, "lr_scale": r.lr_scale,
            "learning_rate": float(spec.learning_rate * r.lr_scale), "overrides": dict(r.overrides),
            "interval": interval, "steps": list(range(0, steps + 1, interval)), "dtype": np.dtype(dtype).name,
            "leaves": leaves_meta, "complete": True,
            "finite": bool(np.all(np.isfinite(np.asarray(a, np.float32))))}
    tmp = os.path.join(folder, f"index.json.{os.getpid()}.tmp")
    with open(tmp, "w") as f:  # atomically: a process killed here leaves no half-written index
      json.dump(meta, f)
    os.replace(tmp, os.path.join(folder, "index.json"))


def load_run(folder: str) -> tuple[np.memmap, dict]:
  """``(states memmap (num_states, num_params), index)`` of a collected run (see
  :mod:`optax_nowcast.metatrain` for an example)."""
  with open(os.path.join(folder, "index.json")) as f:
    meta = json.load(f)
  return np.load(os.path.join(folder, "states.npy"), mmap_mode="r"), meta


def unflatten(row: np.ndarray, meta: dict, like) -> Any:
  """A flat state row back to a params tree shaped like ``like``."""
  leaves = [jnp.asarray(row[m["offset"]: m["offset"] + m["size"]], jnp.float32).reshape(m["shape"])
            for m in meta["leaves"]]
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def runs_summary(folders: list[str]) -> list[dict[str, Any]]:
  """Per task: how many runs ``folders`` hold, their steps, states, learning rates and parameter count
  (the model cards' data tables)."""
  by_task: dict[str, dict[str, Any]] = {}
  for f in folders:
    with open(os.path.join(f, "index.json")) as fh:
      meta = json.load(fh)
    d = by_task.setdefault(meta["task"], {"task": meta["task"], "runs": 0, "steps": meta["steps"][-1],
                                          "states": len(meta["steps"]), "lr": set(), "params": 0})
    d["runs"] += 1
    d["lr"].add(meta["learning_rate"])
    d["params"] = meta["leaves"][-1]["offset"] + meta["leaves"][-1]["size"]
  return [{**d, "lr": sorted(d["lr"])} for d in by_task.values()]



__all__ = ["RunSpec", "collect", "estimate_bytes", "load_run", "plan_runs", "runs_summary", "task_template",
           "unflatten", "write_index"]
