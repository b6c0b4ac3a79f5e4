"""Retrained variants of our predictors, benchmarked but not shipped (results: ``research/results``).

Each variant reads its weights from ``research/weights`` (or ``$OPTAX_NOWCAST_WEIGHT_VARIANTS``); the
command that trains it is kept with it. Importing this module registers the variants as methods of
``benchmarks.run`` for this process only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

import optax_nowcast as onc
from benchmarks import run as bench

HERE = os.path.dirname(os.path.abspath(__file__))

# method name -> (weights file name, the command that trains it; DIR = trajectories, OUT = an output folder).
# NiNo++ options (Knyazev 2025): a NiNo trained by our pipeline with that one option changed.
_NINO_TRAIN = "python -m optax_nowcast.metatrain train --predictor nino --runs DIR --steps 2000 --out OUT"
_NINO_HEAD = ("python -m optax_nowcast.metatrain train --predictor nino --runs DIR "
              "--tasks digits,FM-16,LM-3-24 --steps 1000 --head-edges 4096 --out OUT")
# The generalization issue's diverse distribution (optax_nowcast.metatrain.recipe, scale "cpu"): 7 models x 4
# (optimizer, schedule) pairs x 3 seeds, disjoint from the generalization suite and the held-out paper tasks.
_RECIPE_CPU = "python -m optax_nowcast.metatrain recipe --scale cpu --out OUT"
NINO_VARIANTS = {
    "nino++c": ("nino_c6", f"{_NINO_TRAIN} --node-features lpe+centrality --lpe 6",
                "our NiNo with 5 eigenvectors + centrality as node features"),
    "nino++gru": ("nino_gru", f"{_NINO_HEAD} --head gru", "our NiNo with a GRU head"),
    "nino++lstm": ("nino_lstm", f"{_NINO_HEAD} --head lstm", "our NiNo with an LSTM head"),
    "nino++lpe5": ("nino_lpe5", f"{_NINO_TRAIN} --lpe 5", "our NiNo with 5 Laplacian eigenvectors"),
    "nino-ours+c10": ("nino_c10", "python -m optax_nowcast.metatrain train --predictor nino --runs DIR "
                                  "--tasks digits,FM-16,LM-3-24,C10-16 --init "
                                  "optax_nowcast/pretrained/nino.msgpack --steps 600 --learning-rate 1e-3 "
                                  "--out OUT", "our shipped NiNo fine-tuned with C10-16 runs"),
    "nino-ours+rc": ("nino_rc", "python -m optax_nowcast.metatrain train --predictor nino --runs DIR --init "
                                "optax_nowcast/pretrained/nino.msgpack --steps 600 --learning-rate 1e-3 "
                                "--out OUT", "our shipped NiNo fine-tuned on all 30 runs of the recipe"),
    "nino-recipe": ("nino_recipe", _NINO_TRAIN, "our NiNo trained from scratch on the recipe's 30 runs"),
    "nino-div": ("nino_div", _RECIPE_CPU,
                 "our shipped NiNo fine-tuned on the diverse CPU recipe (optimizers, schedules, widths)"),
}
WNN_PLUS_VARIANTS = {
    "wnn+noc10": ("wnn_plus_noc10", "python -m optax_nowcast.metatrain train --predictor wnn+ --runs DIR "
                                    "--tasks digits,FM-16,LM-2-32,LM-3-24 --steps 4000 --elements 512 "
                                    "--out OUT", "the WNN+ shipped until 2026-12-01 (24 runs, no C10-16)"),
    "wnn+h32": ("wnn_plus_h32", "python -m optax_nowcast.metatrain train --predictor wnn+ --runs DIR "
                                "--tasks digits,FM-16,LM-2-32,LM-3-24 --hidden 32 --steps 4000 "
                                "--elements 512 --out OUT", "wnn+noc10 at hidden 32"),
    "wnn+div": ("wnn_plus_div", _RECIPE_CPU, "WNN+ trained on the diverse CPU recipe (optimizers, schedules, "
                "widths)"),
}
VARIANTS = {**NINO_VARIANTS, **WNN_PLUS_VARIANTS}


def variant_path(method: str) -> str:
  """The weights file of a ``VARIANTS`` method; a clear error, with the command that makes it, if absent."""
  name, command, _ = VARIANTS[method]
  folder = os.environ.get("OPTAX_NOWCAST_WEIGHT_VARIANTS", os.path.join(HERE, "weights"))
  path = os.path.join(folder, f"{name}.msgpack")
  if not os.path.exists(path):
    kind = "nino" if method in NINO_VARIANTS else "wnn_plus"
    raise FileNotFoundError(
        f"method {method!r} needs {path}: train it with `{command}` and copy OUT/{kind}.msgpack and "
        f"OUT/{kind}.json there as {name}.msgpack and {name}.json (or set OPTAX_NOWCAST_WEIGHT_VARIANTS to "
        "their folder).")
  return path


def _variant(method: str) -> bench.Method:
  """A variant reads the graph from the model's forward pass where the parameter names cannot express
  it (residual blocks, normalisation layers), as the shipped ``nino-ours`` and ``wnn+`` do."""
  predictor = onc.predictors.nino if method in NINO_VARIANTS else onc.predictors.wnn_plus
  return bench.nowcast_method(lambda **kw: predictor(variant_path(method), **kw), VARIANTS[method][2],
                              nino_horizon=True, weights=lambda: variant_path(method), trace=True)


def _readme_settings(path: Callable[[], str], label: str, **guard: Any) -> bench.Method:
  """NiNo from the weights at ``path()`` with the README's settings (the learning-rate clock,
  ``schedules.for_run``), as the product's ``nino-ours/rate/run`` and ``nino/rate/run``; ``guard``: more
  ``benchmarks.run.nowcast_method`` options (a rollback)."""
  return bench.nowcast_method(lambda **kw: onc.predictors.nino(path(), **kw), label, nino_horizon=True,
                              rate_clock=True, weights=path, trace=True, per_run=True, **guard)


def _variant_readme(method: str) -> bench.Method:
  """A NiNo variant with the README's settings: only the weights differ from ``nino-ours/rate/run``."""
  return _readme_settings(lambda: variant_path(method), f"{VARIANTS[method][2]}, with the README's settings "
                          "(the learning-rate clock, schedules.for_run)")


# NiNo variants measured with the README's settings too (method name + "/rate/run").
README_SETTINGS = ("nino-recipe",)


def _ruin_guard(weights: str, late: bool = False) -> bench.Method:
  """The README's settings with a guard against a jump that ruins the run: undo it, with the base
  optimizer's state, when ``min(50, interval // 4)`` steps later (``late``: ``interval - 2``, the latest
  check the interval allows, after the base's recovery from a good jump) the running mean of the loss is
  still over ``RUIN_FACTOR`` times the pre-jump mean (or at once at 100x or non-finite). ``weights``:
  ``"nino"`` (the shipped weights) or a NiNo variant's method name."""
  shipped = weights == "nino"
  path = (lambda: onc.weights_io.shipped_path("nino")) if shipped else (lambda: variant_path(weights))
  when = "interval - 2" if late else "min(50, interval // 4)"
  return _readme_settings(path, f"{'nino-ours' if shipped else weights}/rate/run with a rollback of jumps "
                          f"whose loss is still over {RUIN_FACTOR}x the pre-jump loss {when} steps after "
                          "the jump (the base's state restored)",
                          rollback=True, restore_base=True, rollback_limit=100.0, rollback_factor=RUIN_FACTOR,
                          rollback_window=(lambda interval: interval - 2) if late else None)


# A guard only against ruin: a rollback factor far above the 1.5 whose rollbacks cost good jumps.
RUIN_FACTOR = 2.5
RUIN_GUARD = {"nino-ours/rate/run+ruin": ("nino", False), "nino-recipe/rate/run+ruin": ("nino-recipe", False),
              "nino-ours/rate/run+ruinL": ("nino", True)}


def _wnn_plus_k20() -> bench.Method:
  return bench.nowcast_method(onc.predictors.wnn_plus, "our shipped WNN+ with k-decay from 20 (not 40)",
                              nino_horizon=True, max_k=20,
                              weights=lambda: onc.weights_io.shipped_path("wnn_plus"))


def _nino_ours_k(max_k: int, rate_clock: bool) -> bench.Method:
  """Our shipped NiNo with k-decay from ``max_k`` (not 40): a shorter horizon for a base already at its best
  learning rate; ``rate_clock``: on the learning-rate clock, as ``nino-ours/rate``."""
  clock = " on the learning-rate clock" if rate_clock else ""
  label = f"our shipped NiNo with k-decay from {max_k} (not 40){clock}"
  return bench.nowcast_method(onc.predictors.nino, label, nino_horizon=True, max_k=max_k,
                              rate_clock=rate_clock, weights=lambda: onc.weights_io.shipped_path("nino"),
                              trace=True)


def _wnn_plus_on_kernels() -> onc.Predictor:
  """The shipped WNN+ on a list of Dense kernels (what ``nino(max_fan_in=...)`` hands its fallback: the
  leaves without their names): each read as a one-layer model's kernel, for WNN+'s edge types."""
  inner = onc.predictors.wnn_plus()

  def tree(leaves):
    return {"params": {f"Dense_{i}": {"kernel": x} for i, x in enumerate(leaves)}}

  def init(leaves):
    if any(jnp.ndim(x) != 2 for x in leaves):
      raise ValueError("_wnn_plus_on_kernels: only Dense kernels (2-D) are read as a one-layer model.")
    return tuple(inner.init(tree([x])) for x in leaves)

  def predict(history, times, k, state):
    out = [inner.predict(tree([h]), times, k, s)[0]["params"]["Dense_0"]["kernel"]
           for h, s in zip(history, state, strict=True)]
    return out, state

  return onc.Predictor(init=init, predict=predict, name="wnn_plus_on_kernels", min_ctx=inner.min_ctx)


def _nino_fan256_wnn() -> bench.Method:
  """The shipped NiNo with the tensors of fan-in over 256 left to the shipped WNN+ (a learned per-weight
  predictor trained to 40 intervals ahead) instead of linefit+ at 5: what the cheap fallback of a wide
  input layer loses against NiNo on the whole graph."""
  def predictor(**kw):
    return onc.predictors.nino(fallback=_wnn_plus_on_kernels(), max_fan_in=256, **kw)
  return bench.nowcast_method(predictor,
                              "nino-ours, tensors of fan-in > 256 left to our WNN+ (k-decay from 40)",
                              nino_horizon=True, weights=lambda: onc.weights_io.shipped_path("nino"),
                              trace=True)


# A shorter NiNo horizon on top of a base at its best learning rate (the generalization suite's tuned view).
SHORT_HORIZON = {f"nino-ours+k{k}{clock}": (k, bool(clock)) for k in (10, 20) for clock in ("", "/rate")}


def register_all() -> None:
  """Registers every variant (idempotent)."""
  for m in VARIANTS:
    if m not in bench.METHODS:
      bench.register(m, _variant(m))
  for m in README_SETTINGS:
    if f"{m}/rate/run" not in bench.METHODS:
      bench.register(f"{m}/rate/run", _variant_readme(m))
  for m, (weights, late) in RUIN_GUARD.items():
    if m not in bench.METHODS:
      bench.register(m, _ruin_guard(weights, late))
  if "wnn+k20" not in bench.METHODS:
    bench.register("wnn+k20", _wnn_plus_k20())
  for m, (k, rate_clock) in SHORT_HORIZON.items():
    if m not in bench.METHODS:
      bench.register(m, _nino_ours_k(k, rate_clock))
  if "nino-ours+fan256w" not in bench.METHODS:
    bench.register("nino-ours+fan256w", _nino_fan256_wnn())


register_all()
