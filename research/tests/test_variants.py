"""The research variants: their weights, their errors and their registration in the benchmark."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import run as bench
from research import variants

SMALL = bench.Settings(steps=60, eval_every=10, smooth=2, interval=4, ctx=3, horizon=2, val_size=None)


def test_variant_methods_load_their_own_weights(tmp_path, monkeypatch):
  """A retrained variant (NiNo++ option, WNN+ on other data) reads ``<folder>/<name>.msgpack``; missing, the
  error gives the command that trains it; its runs are keyed by the file's hash, so retrained weights are not
  mixed with old runs; with the shipped weights under its name it trains exactly as the shipped method."""
  import shutil

  from optax_nowcast import pretrained

  monkeypatch.setenv("OPTAX_NOWCAST_WEIGHT_VARIANTS", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="--head gru"):
    variants.variant_path("nino++gru")
  with pytest.raises(FileNotFoundError, match="wnn_plus_noc10.msgpack.*--tasks digits,FM-16"):
    variants.variant_path("wnn+noc10")
  for shipped, name in (("nino", "nino_gru"), ("wnn_plus", "wnn_plus_noc10")):  # stand-ins: shipped weights
    for ext in ("msgpack", "json"):
      shutil.copy(pretrained.path(shipped)[: -len("msgpack")] + ext, tmp_path / f"{name}.{ext}")
  s = dataclasses.replace(SMALL, ctx=5)
  spec = bench._spec_for("digits", s)
  before = bench._fingerprint(spec, "nino++gru", 0, s)
  methods = ["adam", "nino++gru", "wnn+", "wnn+noc10"]
  res = bench.run_suite("t", ["digits"], methods, 1, s, str(tmp_path / "out"), quiet=True)
  runs = {m: res["summary"]["digits"]["methods"][m]["per_seed"][0] for m in methods}
  assert runs["nino++gru"]["n_jumps"] == runs["wnn+noc10"]["n_jumps"] == 2  # every interval * ctx = 20 of 60
  assert runs["wnn+noc10"]["final_full_val_loss"] == runs["wnn+"]["final_full_val_loss"]
  with open(tmp_path / "nino_gru.msgpack", "ab") as f:
    f.write(b"\0")
  assert bench._fingerprint(spec, "nino++gru", 0, s) != before


def test_variants_are_not_product_methods():
  import subprocess
  import sys

  out = subprocess.run([sys.executable, "-c", "from benchmarks import run; print(sorted(run.METHODS))"],
                       capture_output=True, text=True, check=True, cwd=bench.REPO).stdout
  assert "nino++gru" not in out and "wnn+k20" not in out and "nino-ours" in out
  assert "nino++gru" in bench.METHODS  # registered in this process by importing research.variants


def test_short_horizon_variants_differ_from_nino_ours_only_in_k(tmp_path, monkeypatch):
  """``nino-ours+k<K>``: the shipped NiNo with k-decay from K; from 40 it trains exactly as ``nino-ours``,
  from 10 it makes the same jumps to other places."""
  monkeypatch.setitem(bench.METHODS, "nino-ours+k40-test", variants._nino_ours_k(40, False))
  methods = ["adam", "nino-ours", "nino-ours+k40-test", "nino-ours+k10"]
  s = dataclasses.replace(SMALL, ctx=5)  # NiNo reads 5 states
  res = bench.run_suite("t", ["digits"], methods, 1, s, str(tmp_path / "out"), quiet=True)
  runs = {m: res["summary"]["digits"]["methods"][m]["per_seed"][0] for m in methods}
  assert runs["nino-ours+k40-test"]["final_full_val_loss"] == runs["nino-ours"]["final_full_val_loss"]
  assert runs["nino-ours+k10"]["n_jumps"] == runs["nino-ours"]["n_jumps"] > 0
  assert runs["nino-ours+k10"]["final_full_val_loss"] != runs["nino-ours"]["final_full_val_loss"]
  assert set(variants.SHORT_HORIZON) == {"nino-ours+k10", "nino-ours+k20", "nino-ours+k10/rate",
                                         "nino-ours+k20/rate"}


def test_wnn_plus_on_kernels_is_wnn_plus_on_a_one_layer_model():
  """``nino-ours+fan256w``'s fallback: WNN+ on a bare kernel predicts what WNN+ does on a model holding
  only that kernel; other shapes are refused at init."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  import optax_nowcast as onc

  hist = jax.random.normal(jax.random.PRNGKey(0), (5, 12, 4)) + jnp.arange(5.0)[:, None, None]
  pred = variants._wnn_plus_on_kernels()
  out, _ = pred.predict([hist], jnp.arange(5.0), jnp.int32(7), pred.init([hist[0]]))
  ref = onc.predictors.wnn_plus()
  tree = {"params": {"Dense_0": {"kernel": hist}}}
  want, _ = ref.predict(tree, jnp.arange(5.0), jnp.int32(7), ref.init(jax.tree.map(lambda h: h[0], tree)))
  np.testing.assert_array_equal(out[0], want["params"]["Dense_0"]["kernel"])
  assert not np.allclose(out[0], hist[-1])
  with pytest.raises(ValueError, match="only Dense kernels"):
    pred.init([jnp.zeros(3)])


def test_readme_settings_variant_differs_from_nino_ours_only_in_weights(tmp_path, monkeypatch):
  """``nino-recipe/rate/run``: the variant's weights with the README's settings (the learning-rate clock,
  ``schedules.for_run``); with the shipped weights under its name it trains exactly as ``nino-ours/rate/run``,
  and its runs are keyed by its own weights."""
  import shutil

  from optax_nowcast import pretrained

  monkeypatch.setenv("OPTAX_NOWCAST_WEIGHT_VARIANTS", str(tmp_path))
  for ext in ("msgpack", "json"):
    shutil.copy(pretrained.path("nino")[: -len("msgpack")] + ext, tmp_path / f"nino_recipe.{ext}")
  assert set(variants.README_SETTINGS) == {"nino-recipe"}
  method = bench.METHODS["nino-recipe/rate/run"]
  assert method.per_run and "README's settings" in method.label
  s = dataclasses.replace(SMALL, ctx=5, steps=200)
  methods = ["adam", "nino-ours/rate/run", "nino-recipe/rate/run"]
  res = bench.run_suite("t", ["digits"], methods, 1, s, str(tmp_path / "out"), quiet=True)
  runs = {m: res["summary"]["digits"]["methods"][m]["per_seed"][0] for m in methods}
  recipe, ours = runs["nino-recipe/rate/run"], runs["nino-ours/rate/run"]
  assert recipe["n_jumps"] == ours["n_jumps"] > 0
  assert recipe["final_full_val_loss"] == ours["final_full_val_loss"]
  spec = bench._spec_for("digits", s)
  before = bench._fingerprint(spec, "nino-recipe/rate/run", 0, s)
  with open(tmp_path / "nino_recipe.msgpack", "ab") as f:
    f.write(b"\0")
  assert bench._fingerprint(spec, "nino-recipe/rate/run", 0, s) != before


def test_ruin_guard_trains_as_the_readme_settings_until_it_rolls_back(tmp_path):
  """``nino-ours/rate/run+ruin``: the README's settings plus a rollback only of jumps that leave the loss
  over ``RUIN_FACTOR`` times the pre-jump loss; a run in which it never rolls back is the unguarded run (up to
  float rounding: the guarded step is another program)."""
  assert variants.RUIN_FACTOR > 1.5  # far above the rollback factor whose rollbacks cost good jumps
  s = dataclasses.replace(SMALL, ctx=5, steps=200)
  methods = ["adam", "nino-ours/rate/run", "nino-ours/rate/run+ruin", "nino-ours/rate/run+ruinL"]
  res = bench.run_suite("t", ["digits"], methods, 1, s, str(tmp_path / "out"), quiet=True)
  runs = {m: res["summary"]["digits"]["methods"][m]["per_seed"][0] for m in methods}
  plain = runs["nino-ours/rate/run"]
  for guarded in (runs["nino-ours/rate/run+ruin"], runs["nino-ours/rate/run+ruinL"]):
    assert guarded["n_rollbacks"] == 0 and guarded["n_jumps"] == plain["n_jumps"] > 0
    assert guarded["final_full_val_loss"] == pytest.approx(plain["final_full_val_loss"], rel=1e-5)
  from unittest import mock

  import optax

  import optax_nowcast as onc

  task = bench.make_suite_task("G-digits-MLP2-adabelief", None, bench.GENERAL_QUICK)
  for method, window in (("nino-ours/rate/run+ruin", None), ("nino-ours/rate/run+ruinL", "late")):
    st = bench.method_settings(task, method, bench.GENERAL_QUICK)
    with mock.patch.object(onc, "nowcast", return_value=optax.identity()) as nowcast:
      bench.METHODS[method].build(task, st)
    kw = nowcast.call_args.kwargs
    assert kw["rollback_factor"] == variants.RUIN_FACTOR and kw["base"] is not None
    assert kw.get("rollback_window") == (st.interval - 2 if window else None)
