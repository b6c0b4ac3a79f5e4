"""The diverse meta-training recipe (metatrain.recipe): its plan, its toy scale end to end, the data pack."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_nowcast as onc
from optax_nowcast.metatrain import recipe
from optax_nowcast.metatrain.__main__ import main
from optax_nowcast.tasks import datasets


def test_gpu_plan_is_diverse_large_and_held_out():
  scale = recipe.SCALES["gpu"]
  specs = recipe.configurations(scale)
  rows = recipe.plan(scale)
  assert sum(r["runs"] for r in rows) >= 10 * 24  # the shipped NiNo: 24 runs
  assert {s.optimizer for s in specs} == {"adam", "sgd", "nesterov", "lion", "adabelief"}
  assert any(s.optimizer == "adam" and s.weight_decay for s in specs)  # AdamW
  assert {s.schedule for s in specs} == set(recipe.SCHEDULES)
  assert {s.kind for s in specs} == {"digits", "vision", "lm"} and any(s.arch == "mlp" for s in specs)
  assert all(recipe.held_out_clash(sc) == [] for sc in recipe.SCALES.values())
  assert len({s.name for s in specs}) == len(specs)
  first = [recipe.model_of(s) for s in specs[: len(scale.models)]]
  assert sorted(first) == sorted(scale.models)  # round robin: a short budget still sees every model
  assert sum(r["bytes"] for r in rows) < 2**30


@pytest.mark.slow
def test_toy_recipe_end_to_end(tmp_path):
  """The command at toy scale: collects its configurations with their optimizers and schedules, trains
  WNN+ and NiNo, writes weights that load and predict, a log and a card."""
  out = tmp_path / "out"
  record = main(["recipe", "--scale", "toy", "--out", str(out)])
  toy = recipe.SCALES["toy"]
  assert [c["config"] for c in record["collected"]] == [s.name for s in recipe.configurations(toy)]
  assert record["runs"] == len(toy.seeds) * len(toy.lr_scales) * toy.combos_per_model
  assert record["nino_steps"] == toy.nino.steps
  log = json.loads((out / "recipe_log.json").read_text())
  assert set(log["phases"]) == {"collect_s", "wnn_plus_s", "nino_s"}
  card = (out / "MODEL_CARD.md").read_text()
  assert "`python -m optax_nowcast.metatrain recipe --scale toy --out OUT`" in card
  for name in ("nino", "wnn_plus"):  # each file's hash, as weights_io checks it at load
    assert json.loads((out / f"{name}.json").read_text())["sha256"] in card
  for s in recipe.configurations(toy):
    assert s.name in card
    meta = json.loads(next((out / "trajectories" / s.name).glob("*/index.json")).read_text())
    assert (meta["spec"]["optimizer"], meta["spec"]["schedule"]) == (s.optimizer, s.schedule)
  params = {"params": {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
                       "Dense_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
  for pred in (onc.predictors.nino(str(out / "nino.msgpack")),
               onc.predictors.wnn_plus(str(out / "wnn_plus.msgpack"))):
    state = pred.init(params)
    hist = jax.tree.map(lambda p: jnp.stack([p + 0.1 * i for i in range(5)]), params)
    new, _ = pred.predict(hist, jnp.arange(-4.0, 1.0), jnp.int32(2), state)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new))


def test_dry_run_measures_collection_and_training_here(tmp_path):
  res = main(["recipe", "--scale", "toy", "--out", str(tmp_path), "--dry-run"])
  assert set(res["costs"]) == {"digits-MLP32"}
  assert res["costs"]["digits-MLP32"]["s_per_group_step"] > 0 and res["expected_collect_s_here"] > 0
  assert res["nino_step_s_here"] > 0 and len(res["plan"]) == 2
  assert json.loads((tmp_path / "recipe_toy_dry_run.json").read_text())["plan"] == res["plan"]
  table = (tmp_path / "recipe_toy_dry_run.md").read_text()
  assert "| digits-MLP32 |" in table and table.count("| R-digits-MLP32-") == 2


def test_pack_carries_balanced_subsets_the_loaders_read(tmp_path, data_dir):
  written = datasets.pack(tmp_path, data_dir, fm_train=200, cifar_train=100, test=100)
  assert written["fashion-mnist"]["train"] == 200 and written["cifar10"]["test"] == 100
  fm = datasets.load_fashion_mnist(tmp_path / "fashion-mnist")  # no canonical files there: the pack
  assert fm.x_train.shape == (200, 28, 28, 1) and np.bincount(fm.y_train).tolist() == [20] * 10
  c10 = datasets.load_cifar10(tmp_path / "cifar10")
  assert c10.x_test.shape == (100, 32, 32, 3) and c10.x_train.dtype == np.uint8
  full = datasets.load_fashion_mnist()
  first_shirts = np.flatnonzero(full.y_train == 6)[:20]
  np.testing.assert_array_equal(fm.x_train[fm.y_train == 6], full.x_train[first_shirts])
  text = datasets.load_tiny_shakespeare(tmp_path / "tiny_shakespeare")
  assert len(text.vocab) == 65
  with np.load(tmp_path / "cifar10" / "packed.npz") as z:
    bad = {k: z[k] for k in z.files}
  bad["y_train"] = np.zeros_like(bad["y_train"])
  np.savez(tmp_path / "cifar10" / "packed.npz", **bad)
  with pytest.raises(ValueError, match=r"packed.npz.*train labels"):
    datasets.load_cifar10(tmp_path / "cifar10")
