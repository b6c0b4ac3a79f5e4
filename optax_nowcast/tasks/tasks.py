"""Benchmark tasks: data + model + loss + validation metric + base-optimizer settings.

A ``Task`` keeps everything the training loop needs and nothing about nowcasting (tasks live apart from
optimizers, as in learned_optimization), so the same task serves the benchmark, the demo and the
trajectory collection for meta-training.

================  ===============================  =====================================  ==========
name              data                              model                                  base opt.
================  ===============================  =====================================  ==========
``FM-16``         Fashion-MNIST                     CNN 16-32-32 (14,378 params)           Adam 6e-3
``FM-32``         Fashion-MNIST                     CNN 32-64-64 (56,394 params)           Adam 6e-3
``C10-16``        CIFAR-10                          CNN 16-32-32 (14,666 params)           Adam 3e-3
``C10-32``        CIFAR-10                          CNN 32-64-64 (56,970 params)           Adam 3e-3
``LM-3-24``       Tiny Shakespeare (characters)     GPT 3 layers, 24 units, 3 heads        AdamW 3e-3
``LM-2-32``       Tiny Shakespeare (characters)     GPT 2 layers, 32 units, 2 heads        AdamW 3e-3
``LM-3-64``       Tiny Shakespeare (characters)     GPT 3 layers, 64 units, 4 heads        AdamW 3e-3
``digits``        sklearn digits                    MLP 64-128-128-10                      Adam 3e-4
================  ===============================  =====================================  ==========

The vision tasks are the NiNo paper's (batch 128, 10k steps, Adam without weight decay, validation
accuracy on the test split). The language tasks follow NiNo's LM tasks (GPT-2-style, AdamW, weight decay
1e-2, batch 32, 10k steps) scaled to a CPU: characters instead of GPT-2 tokens, sequences of 64 instead of
1024, and a learning rate chosen for that setting (a sweep on LM-3-24, 3,000 steps: lr 1e-3 / 3e-3 / 1e-2
gave validation perplexity 8.03 / 7.27 / 7.10; 3e-3 is used for all three sizes as the safer one for the
larger model). The metric is validation perplexity.

Minibatches are drawn on the host as index arrays (``batch_indices``), so every method sees exactly the same
sequence of batches for a seed, and gathered on the device from the resident dataset inside ``loss``.

>>> task = make_task("digits")
>>> params = task.init(jax.random.PRNGKey(0))
>>> task.batch_indices(seed=0, start=0, num_steps=3).shape
(3, 32)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nowcast.tasks import datasets
from optax_nowcast.tasks.digits import load_digits_split
from optax_nowcast.tasks.models import CNN, GPT, MLP, ResCNN, ResNet, ViT

Params = Any


def conv_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None,
                   preferred_element_type=None, **kwargs):
  """``lax.conv_general_dilated`` for NHWC/HWIO as shifted slices and one matmul (im2col).

  A drop-in ``conv_general_dilated`` for ``nn.Conv`` (same parameters, same result to float rounding). On
  CPU, XLA's convolutions of these small CNNs are ~20x slower than this (16.5 vs 341 ms per FM-16 Adam step
  with batch 128 on 2 cores), so the CPU benchmark uses it; other backends keep XLA's convolution.
  """
  if (feature_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or any(d != 1 for d in (rhs_dilation or (1, 1))) or any(v is not None for v in kwargs.values())):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type, **kwargs)
  kh, kw, cin, cout = rhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  cols = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1) @ rhs.reshape(kh * kw * cin, cout)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """The settings of a task (what the NiNo paper's tables name)."""

  name: str
  kind: str  # "vision", "lm" or "digits"
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float = 0.0
  metric: str = "accuracy"  # "accuracy" (higher is better) or "perplexity" (lower is better)
  paper_target: float | None = None  # the NiNo paper's fixed target for this task, if it has one
  dataset: str = ""
  features: tuple[int, ...] = ()
  lm_shape: tuple[int, int, int] = (0, 0, 0)  # layers, units, heads
  block_size: int = 64
  val_size: int = 2000  # examples (vision) or sequences (lm) in the fixed validation subset
  # The base optimizer: "adam" (AdamW when weight_decay > 0), "sgd" (momentum 0.9), "nesterov" (SGD with
  # Nesterov momentum 0.9), "lion", "adabelief".
  optimizer: str = "adam"
  # Its learning-rate schedule: "constant", "warmup_cosine" (linear warmup over 5 % of the steps, cosine
  # decay to 0), "linear" (the same warmup, linear decay to 0) or "step" (x0.1 at 50 % and 75 %).
  schedule: str = "constant"
  # "": the kind's model (vision CNN, digits MLP); "mlp"; "resnet" (ResCNN); "resnet18" (ResNet with
  # GroupNorm, one basic block per stage, stage widths ``features``); "vit" (ViT, ``lm_shape`` = depth,
  # width, heads)
  arch: str = ""

  @property
  def higher_is_better(self) -> bool:
    return self.metric == "accuracy"

  def learning_rate_schedule(self, peak: float | None = None) -> float | optax.Schedule:
    """The task's learning rate: a number (constant) or a schedule ``step -> rate`` over ``steps``."""
    lr, total = self.learning_rate if peak is None else peak, self.steps
    warm = max(1, total // 20)
    if self.schedule == "constant":
      return lr
    if self.schedule == "warmup_cosine":
      return optax.warmup_cosine_decay_schedule(0.0, lr, warm, total, end_value=0.0)
    if self.schedule == "linear":
      return optax.join_schedules([optax.linear_schedule(0.0, lr, warm),
                                   optax.linear_schedule(lr, 0.0, total - warm)], [warm])
    if self.schedule == "step":
      return optax.piecewise_constant_schedule(lr, {total // 2: 0.1, 3 * total // 4: 0.1})
    raise ValueError(f"TaskSpec {self.name}: unknown schedule {self.schedule!r}; use constant, "
                     "warmup_cosine, linear or step.")


# Held-out configurations of the generalization suite (`python -m benchmarks.run --suite general`): model
# families, widths, optimizers, schedules and batch sizes that no shipped predictor was trained on (the
# meta-training recipe draws from ``TASKS`` only). Each is short enough for a CPU core (about 2 minutes).
def _g(name, kind, dataset, steps, batch, lr, optimizer, schedule, *, wd=0.0, arch="", features=(),
       lm_shape=(0, 0, 0), val_size=2000):
  metric = "perplexity" if kind == "lm" else "accuracy"
  return TaskSpec(name, kind, steps, batch, lr, wd, metric=metric, dataset=dataset, features=features,
                  lm_shape=lm_shape, val_size=val_size, optimizer=optimizer, schedule=schedule, arch=arch)


GENERAL_TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _g("G-FM-MLP2-adam", "vision", "fashion_mnist", 3000, 128, 1e-3, "adam", "constant", arch="mlp",
       features=(256, 128)),
    _g("G-FM-MLP3-adamw-cos", "vision", "fashion_mnist", 3000, 128, 1e-3, "adam", "warmup_cosine", wd=1e-2,
       arch="mlp", features=(512, 256, 128)),
    _g("G-digits-MLP1-nesterov-step", "digits", "digits", 2000, 64, 0.05, "nesterov", "step",
       features=(256,), val_size=359),
    _g("G-digits-MLP4-lion-lin", "digits", "digits", 2000, 32, 1e-4, "lion", "linear",
       features=(64, 64, 64, 64), val_size=359),
    _g("G-digits-MLP2-adabelief", "digits", "digits", 2000, 16, 1e-3, "adabelief", "constant",
       features=(96, 48), val_size=359),
    _g("G-FM-CNN8-sgd", "vision", "fashion_mnist", 3000, 64, 0.05, "sgd", "constant", features=(8, 16, 16)),
    _g("G-FM-CNN24-adam-cos", "vision", "fashion_mnist", 2000, 64, 3e-3, "adam", "warmup_cosine",
       features=(24, 48, 48)),
    _g("G-C10-CNN12-adabelief", "vision", "cifar10", 2000, 128, 3e-3, "adabelief", "constant",
       features=(12, 24, 24)),
    _g("G-C10-CNN20-adamw-step", "vision", "cifar10", 2000, 64, 2e-3, "adam", "step", wd=1e-2,
       features=(20, 40, 40)),
    _g("G-FM-Res-adam", "vision", "fashion_mnist", 2000, 64, 3e-3, "adam", "constant", arch="resnet",
       features=(8, 16)),
    _g("G-C10-Res-nesterov-cos", "vision", "cifar10", 2000, 64, 0.05, "nesterov", "warmup_cosine",
       arch="resnet", features=(8, 16)),
    _g("G-LM-4-16-adamw", "lm", "tiny_shakespeare", 3000, 32, 3e-3, "adam", "constant", wd=1e-2,
       lm_shape=(4, 16, 2), val_size=256),
    _g("G-LM-1-48-lion-cos", "lm", "tiny_shakespeare", 3000, 32, 3e-4, "lion", "warmup_cosine", wd=1e-2,
       lm_shape=(1, 48, 4), val_size=256),
    _g("G-LM-2-40-adam-lin", "lm", "tiny_shakespeare", 3000, 32, 3e-3, "adam", "linear",
       lm_shape=(2, 40, 4), val_size=256),
]}


# Architectures the shipped NiNo never saw and its name-based graph cannot read (GroupNorm, residual blocks,
# a class token, patch embeddings): ``nino(apply_fn=..., example_input=...)`` traces them
# (`python -m benchmarks.run --suite arch`).
ARCH_TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _g("A-C10-ResNet8-adam", "vision", "cifar10", 1500, 64, 2e-3, "adam", "constant", arch="resnet18",
       features=(8, 16, 32)),
    _g("A-C10-ViT32-adam", "vision", "cifar10", 1500, 64, 1e-3, "adam", "constant", arch="vit",
       lm_shape=(3, 32, 4)),
]}


# The fields added after the paper tasks' runs were recorded; at these defaults they leave a spec's
# fingerprint (benchmarks) unchanged.
SPEC_DEFAULTS_SINCE_V2 = {"optimizer": "adam", "schedule": "constant", "arch": ""}


def spec_record(spec: TaskSpec) -> dict[str, Any]:
  """``dataclasses.asdict(spec)`` without the later fields that are at their defaults."""
  d = dataclasses.asdict(spec)
  return {k: v for k, v in d.items() if not (k in SPEC_DEFAULTS_SINCE_V2 and v == SPEC_DEFAULTS_SINCE_V2[k])}


TASKS: dict[str, TaskSpec] = {
    "FM-16": TaskSpec("FM-16", "vision", 10_000, 128, 6e-3, metric="accuracy", paper_target=0.895,
                      dataset="fashion_mnist", features=(16, 32, 32)),
    "FM-32": TaskSpec("FM-32", "vision", 10_000, 128, 6e-3, metric="accuracy", paper_target=0.905,
                      dataset="fashion_mnist", features=(32, 64, 64)),
    "C10-16": TaskSpec("C10-16", "vision", 10_000, 128, 3e-3, metric="accuracy", paper_target=0.660,
                       dataset="cifar10", features=(16, 32, 32)),
    "C10-32": TaskSpec("C10-32", "vision", 10_000, 128, 3e-3, metric="accuracy", paper_target=0.725,
                       dataset="cifar10", features=(32, 64, 64)),
    "LM-3-24": TaskSpec("LM-3-24", "lm", 10_000, 32, 3e-3, 1e-2, metric="perplexity",
                        dataset="tiny_shakespeare", lm_shape=(3, 24, 3), val_size=256),
    "LM-2-32": TaskSpec("LM-2-32", "lm", 10_000, 32, 3e-3, 1e-2, metric="perplexity",
                        dataset="tiny_shakespeare", lm_shape=(2, 32, 2), val_size=256),
    "LM-3-64": TaskSpec("LM-3-64", "lm", 10_000, 32, 3e-3, 1e-2, metric="perplexity",
                        dataset="tiny_shakespeare", lm_shape=(3, 64, 4), val_size=256),
    "digits": TaskSpec("digits", "digits", 2000, 32, 3e-4, metric="accuracy", dataset="digits",
                       features=(128, 128), val_size=359),
}


@functools.lru_cache(maxsize=4)
def _load(dataset: str, data_dir: str | None):
  sub = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar10", "tiny_shakespeare": "tiny_shakespeare"}
  path = None  # a data_dir without this dataset's folder leaves it to the loader's own search
  if data_dir is not None and dataset in sub and os.path.exists(os.path.join(data_dir, sub[dataset])):
    path = os.path.join(data_dir, sub[dataset])
  if dataset == "fashion_mnist":
    return datasets.load_fashion_mnist(path)
  if dataset == "cifar10":
    return datasets.load_cifar10(path)
  if dataset == "tiny_shakespeare":
    return datasets.load_tiny_shakespeare(path)
  d = load_digits_split()
  return datasets.ImageData(d.x_train, d.y_train, d.x_val, d.y_val, (0.0,), (1.0,))


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A task with its data resident on the device. Build it with ``make_task``.

  Attributes:
    spec: the settings.
    model: the Flax module.
    init: ``key -> params``.
    loss: ``(params, batch_indices[B]) -> scalar`` training loss on the gathered minibatch.
    evaluate: ``params -> {"metric": ..., "loss": ...}`` on the fixed validation subset (jit it).
    evaluate_full: the same on the whole validation split (slower; for final numbers).
    optimizer: ``() -> optax.GradientTransformation``, the base optimizer of the task.
    example: one input example (a batch of one) for ``model.apply``, e.g. to trace the model's graph.
  """

  spec: TaskSpec
  model: nn.Module
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, jax.Array], jax.Array]
  evaluate: Callable[[Params], dict[str, jax.Array]]
  evaluate_full: Callable[[Params], dict[str, jax.Array]]
  num_train: int
  example: Any = None

  @property
  def name(self) -> str:
    return self.spec.name

  def learning_rate_schedule(self) -> float | optax.Schedule:
    """The base optimizer's learning rate (a number, or a schedule ``step -> rate``)."""
    return self.spec.learning_rate_schedule()

  def optimizer(self, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The task's base optimizer; ``learning_rate`` replaces the (peak) rate of its schedule."""
    spec = self.spec
    lr = spec.learning_rate_schedule(learning_rate)
    wd = spec.weight_decay
    if spec.optimizer == "adam":
      return optax.adamw(lr, weight_decay=wd) if wd else optax.adam(lr)
    if spec.optimizer in ("sgd", "nesterov"):
      sgd = optax.sgd(lr, momentum=0.9, nesterov=spec.optimizer == "nesterov")
      return optax.chain(optax.add_decayed_weights(wd), sgd) if wd else sgd
    if spec.optimizer == "lion":
      return optax.lion(lr, weight_decay=wd)
    if spec.optimizer == "adabelief":
      return optax.adabelief(lr)
    raise ValueError(f"TaskSpec {spec.name}: unknown optimizer {spec.optimizer!r}; use adam, sgd, nesterov, "
                     "lion or adabelief.")

  def batch_indices(self, seed: int, start: int, num_steps: int) -> np.ndarray:
    """Minibatch indices for steps ``start .. start+num_steps-1`` of run ``seed``: int32 ``(num_steps, B)``.

    Vision and digits: a fresh permutation of the training set every epoch (the last partial batch is
    dropped), as a shuffling data loader does. Language: random window offsets. Deterministic in
    ``(seed, step)`` whatever the chunking.
    """
    b = self.spec.batch_size
    if self.spec.kind == "lm":
      rows = [np.random.default_rng([seed, s]).integers(0, self.num_train, b) for s in
              range(start, start + num_steps)]
      return np.stack(rows).astype(np.int32)
    per_epoch = self.num_train // b
    out = []
    for epoch in range(start // per_epoch, (start + num_steps - 1) // per_epoch + 1):
      perm = np.random.default_rng([seed, epoch]).permutation(self.num_train)[: per_epoch * b]
      out.append(perm.reshape(per_epoch, b))
    rows = np.concatenate(out)[start % per_epoch: start % per_epoch + num_steps]
    return rows.astype(np.int32)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _classifier_task(spec: TaskSpec, data: datasets.ImageData, model: nn.Module) -> Task:
  x_tr, y_tr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  mean = jnp.asarray(data.mean, jnp.float32)
  std = jnp.asarray(data.std, jnp.float32)
  is_image = data.x_train.dtype == np.uint8

  def prep(x):
    return (x.astype(jnp.float32) / 255.0 - mean) / std if is_image else x

  # The fixed validation subset: the first val_size/num_classes examples of every class, in file order.
  per_class = spec.val_size // data.num_classes
  if spec.kind == "digits":
    subset = np.arange(len(data.y_test))
  else:
    subset = np.concatenate([np.flatnonzero(data.y_test == c)[:per_class] for c in range(data.num_classes)])
  x_val, y_val = jnp.asarray(data.x_test[subset]), jnp.asarray(data.y_test[subset])
  x_all, y_all = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def init(key):
    return model.init(key, prep(x_tr[:1]))

  def loss(params, idx):
    return _xent(model.apply(params, prep(x_tr[idx])), y_tr[idx])

  def evaluate_on(x, y, params, chunk=1000):
    n = x.shape[0] // chunk * chunk
    xs = [x[i:i + chunk] for i in range(0, n, chunk)] + ([x[n:]] if n < x.shape[0] else [])
    logits = jnp.concatenate([model.apply(params, prep(xb)) for xb in xs])
    return {"metric": jnp.mean(jnp.argmax(logits, -1) == y), "loss": _xent(logits, y)}

  return Task(spec, model, init, loss, functools.partial(evaluate_on, x_val, y_val),
              functools.partial(evaluate_on, x_all, y_all), len(data.y_train), prep(x_tr[:1]))


def _lm_task(spec: TaskSpec, data: datasets.TextData) -> Task:
  layers, dim, heads = spec.lm_shape
  t = spec.block_size
  model = GPT(len(data.vocab), t, layers, dim, heads)
  train = jnp.asarray(data.train)
  offsets = jnp.arange(t + 1)

  def windows(tokens, starts):
    return tokens[starts[:, None] + offsets[None, :]]

  # Validation: val_size windows at evenly spaced offsets (the fixed subset) or all disjoint windows (full).
  n_val = len(data.val) - t - 1
  sub_starts = jnp.asarray(np.linspace(0, n_val, spec.val_size).astype(np.int32))
  all_starts = jnp.asarray(np.arange(0, n_val, t, dtype=np.int32))
  val = jnp.asarray(data.val)

  def init(key):
    return model.init(key, jnp.zeros((1, t), jnp.int32))

  def seq_loss(params, w):
    return _xent(model.apply(params, w[:, :-1]), w[:, 1:])

  def loss(params, starts):
    return seq_loss(params, windows(train, starts))

  def evaluate_on(starts, params, chunk=128):
    n = starts.shape[0] // chunk * chunk
    parts = [starts[i:i + chunk] for i in range(0, n, chunk)] + ([starts[n:]] if n < starts.shape[0] else [])
    sizes = jnp.asarray([p.shape[0] for p in parts], jnp.float32)
    losses = jnp.stack([seq_loss(params, windows(val, p)) for p in parts])
    mean = jnp.sum(losses * sizes) / jnp.sum(sizes)
    return {"metric": jnp.exp(mean), "loss": mean}

  return Task(spec, model, init, loss, functools.partial(evaluate_on, sub_starts),
              functools.partial(evaluate_on, all_starts), len(data.train) - t - 1,
              jnp.zeros((1, t), jnp.int32))


def make_task(name: str | TaskSpec, data_dir: str | None = None, fast_conv: bool | None = None,
              **overrides) -> Task:
  """Builds a task by name (see the table in the module docstring), loading its data.

  Args:
    name: one of ``TASKS``, ``GENERAL_TASKS`` or ``ARCH_TASKS``, or a ``TaskSpec`` (e.g. a meta-training
      recipe's configuration, ``optax_nowcast.metatrain.recipe``).
    data_dir: a folder holding ``fashion-mnist/``, ``cifar10/`` and ``tiny_shakespeare/``; default: where the
      loaders look (``optax_nowcast.tasks.datasets``).
    fast_conv: compute convolutions as im2col matmuls (``conv_as_matmul``); default: on CPU only.
    **overrides: ``TaskSpec`` fields to change, e.g. ``steps=300, val_size=500``.
  """
  known = {**TASKS, **GENERAL_TASKS, **ARCH_TASKS}
  if not isinstance(name, TaskSpec) and name not in known:
    raise ValueError(f"Unknown task {name!r}; choose one of {sorted(known)}.")
  fields = {f.name for f in dataclasses.fields(TaskSpec)}
  if bad := sorted(set(overrides) - fields):
    raise ValueError(f"Unknown TaskSpec field(s) {bad}; the fields are {sorted(fields)}.")
  spec = dataclasses.replace(name if isinstance(name, TaskSpec) else known[name], **overrides)
  data = _load(spec.dataset, data_dir)
  if spec.kind == "lm":
    return _lm_task(spec, data)
  if spec.kind == "digits" or spec.arch == "mlp":
    return _classifier_task(spec, data, MLP(spec.features))
  if fast_conv is None:
    fast_conv = jax.default_backend() == "cpu"
  conv = conv_as_matmul if fast_conv else None
  if spec.arch == "resnet18":
    model = ResNet(spec.features[0], (1,) * len(spec.features), norm="group", conv=conv)
  elif spec.arch == "vit":
    depth, dim, heads = spec.lm_shape
    model = ViT(dim=dim, depth=depth, num_heads=heads)
  elif spec.arch == "resnet":
    model = ResCNN(spec.features, conv=conv)
  else:
    model = CNN(spec.features, conv=conv)
  return _classifier_task(spec, data, model)


__all__ = ["ARCH_TASKS", "GENERAL_TASKS", "TASKS", "Task", "TaskSpec", "conv_as_matmul", "make_task",
           "spec_record"]
