"""Every bad argument fails at construction or init/update with a message naming it and the fix."""

import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast import schedules

LINEFIT = onc.predictors.linefit()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(interval=0), r"interval must be >= 1, got 0\. interval is the number of optimizer"),
        (dict(interval=2.0), r"interval must be an int, got 2\.0"),
        (dict(interval=True), r"interval must be an int"),
        (dict(interval=5, ctx=1), r"ctx must be >= 2, got 1\. ctx is the number of recorded"),
        (dict(interval=5, ctx=3, period=10),
         r"period: jumps 10 steps apart are shorter than ctx \* interval = 3 \* 5 = 15.*"
         r"Use a period of at least 15 steps"),
        (dict(interval=5, ctx=3, period=schedules.dynamic_period(15, 40, total_steps=100)),
         None),
        (dict(interval=10, ctx=3, period=schedules.dynamic_period(15, 40, total_steps=100)),
         r"period: jumps 15 steps apart are shorter than ctx \* interval = 3 \* 10 = 30"),
        (dict(interval=5, period="often"), r"period must be None, an int or a schedules"),
        (dict(interval=5, horizon=-2), r"horizon must be >= 0 intervals, got -2"),
        (dict(interval=5, horizon=1.5), r"horizon must be None, an int \(intervals\)"),
        (dict(interval=5, history_dtype=jnp.int8), r"history_dtype must be a float dtype"),
        (dict(interval=5, history_dtype="not-a-dtype"), r"history_dtype must be a float dtype"),
        (dict(interval=5, period=10, horizon=schedules.k_decay(5, total_steps=20)), None),
        (dict(interval=5, period=50, horizon=schedules.k_decay(5, total_steps=20)),
         r"k_decay\(total_steps=20\) allows no jump"),
    ],
)
def test_construction_errors(kwargs, match):
  kwargs = {"ctx": 2, **kwargs}
  if match is None:
    onc.nowcast(LINEFIT, **kwargs)  # valid combinations construct fine
    return
  with pytest.raises(ValueError, match=match):
    onc.nowcast(LINEFIT, **kwargs)


def test_predictor_must_be_a_predictor():
  with pytest.raises(ValueError, match=r"predictor must be an optax_nowcast.predictors.Predictor"):
    onc.nowcast(lambda history: history, interval=5)


def test_predictor_minimum_context_is_enforced():
  needs_five = LINEFIT._replace(name="needs-five", min_ctx=5)
  with pytest.raises(ValueError, match=r"ctx must be >= 5.*needs-five needs at least 5"):
    onc.nowcast(needs_five, interval=5, ctx=3)


def test_update_without_params_explains_why():
  tx = optax.chain(optax.adam(1e-3), onc.nowcast(LINEFIT, interval=2))
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"nowcast needs the current parameters.*"
                                       r"tx.update\(updates, state, params\)"):
    tx.update(params, state)


def test_init_without_params():
  with pytest.raises(ValueError, match=r"nowcast.init needs the parameters"):
    onc.nowcast(LINEFIT, interval=2).init(None)


# --- errors that say what went wrong (the issue "nino() on the models people bring", item 3) ---


def _linefit_tx():
  return onc.nowcast(onc.predictors.linefit(), interval=2, ctx=2)


def test_update_with_params_of_another_shape_names_the_path_and_both_shapes():
  tx = _linefit_tx()
  state = tx.init({"w": jnp.zeros((4, 3))})
  p = {"w": jnp.zeros((1, 3))}
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(1, 3\), but tx.init was given shape \(4, 3\)"):
    tx.update(p, state, p)


def test_update_with_another_tree_names_the_first_differing_leaf():
  tx = _linefit_tx()
  state = tx.init({"w": jnp.zeros((4, 3))})
  p = {"b": jnp.zeros(3), "w": jnp.zeros((4, 3))}
  with pytest.raises(ValueError, match=r"float leaf 0 is \['b'\] \(shape \(3,\)\) at update but was \['w'\]"):
    tx.update(p, state, p)


def _run_predictor(predict, params, steps=3):
  tx = onc.nowcast(onc.Predictor(init=lambda p: (), predict=predict, name="mine"), interval=1, ctx=2)
  state = tx.init(params)
  for _ in range(steps):
    _, state = tx.update(params, state, params)
  return state


@pytest.mark.parametrize("predict, match", [
    (lambda h, t, k, s: (h, s), r"'mine' returned float32\[2, 3\] at \['w'\], expected a float array of the "
                                r"parameter's shape \[3\]"),
    (lambda h, t, k, s: ({"w": h["w"][-1].astype(jnp.int32)}, s), r"returned int32\[3\] at \['w'\]"),
    (lambda h, t, k, s: ([h["w"][-1]], s), "returned a prediction of structure"),
], ids=["ctx-axis-left-in", "int-dtype", "wrong-structure"])
def test_a_predictor_returning_the_wrong_thing_is_named(predict, match):
  with pytest.raises(ValueError, match=match):
    _run_predictor(predict, {"w": jnp.zeros(3)})


def test_no_jump_is_counted_when_there_is_nothing_to_predict():
  params = {"n": jnp.zeros(3, jnp.int32), "flag": jnp.array(True)}
  state = _run_predictor(lambda h, t, k, s: (h, s), params, steps=7)
  assert int(state.n_jumps) == 0 and int(state.n_rejected) == 0 and int(state.n_missed) == 0
  assert int(state.count) == 7


def _official_npz(reference_dir, tmp_path, edit):
  from conftest import need

  src = need(os.path.join(reference_dir, "weights", "nino_no_posw.npz"), "the official NiNo checkpoint")
  with np.load(src) as z:
    sd = {k: z[k] for k in z.files}
  edit(sd)
  path = tmp_path / "edited.npz"
  np.savez(path, **sd)
  return str(path)


def test_a_checkpoint_missing_a_tensor_is_named_at_load(reference_dir, tmp_path):
  path = _official_npz(reference_dir, tmp_path, lambda sd: sd.pop("gnn.convs.2.lin.weight"))
  with pytest.raises(ValueError, match=r"edited.npz: the checkpoint has no tensor 'gnn.convs.2.lin.weight'"):
    onc.predictors.nino(path)


def test_a_checkpoint_tensor_of_the_wrong_shape_is_named_at_load(reference_dir, tmp_path):
  def edit(sd):
    sd["gnn.convs.1.lin.bias"] = np.zeros(sd["gnn.convs.1.lin.bias"].shape[0] + 1, np.float32)

  path = _official_npz(reference_dir, tmp_path, edit)
  match = r"tensor 'gnn.convs.1.lin.bias' has shape \(\d+,\), expected \(\d+,\)"
  with pytest.raises(ValueError, match=match):
    onc.predictors.nino(path)


def test_a_wnn_plus_checkpoint_missing_a_tensor_is_named_at_load(reference_dir, tmp_path):
  from conftest import need

  src = need(os.path.join(reference_dir, "weights", "nino_mlp.npz"), "the official WNN+ checkpoint")
  with np.load(src) as z:
    sd = {k: z[k] for k in z.files if k != "edge_mlp.fc.2.bias"}
  with pytest.raises(ValueError, match="no tensor 'edge_mlp.fc.2.bias'"):
    onc.predictors.wnn_plus(weights=sd)
