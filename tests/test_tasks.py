"""Tasks and models: the NiNo CNN against the official code's forward pass, im2col convs, batching."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_nowcast.tasks import CNN, TASKS, conv_as_matmul, make_task


def _flax_from_torch_flat(flat: np.ndarray, torch_params: list[dict]) -> dict:
  """The reference's flat torch parameter vector as a Flax params tree (README 2.1 of the vectors)."""
  tree: dict = {}
  for p in torch_params:
    t = flat[p["offset"]: p["offset"] + p["numel"]].reshape(p["shape"])
    if len(p["shape"]) == 4:
      t = t.transpose(2, 3, 1, 0)
    elif len(p["shape"]) == 2:
      t = t.T
    module, name = p["flax_path"].split("/")
    tree.setdefault(module, {})[name] = jnp.asarray(t)
  return {"params": tree}


@pytest.mark.parametrize("conv", [None, conv_as_matmul], ids=["xla_conv", "conv_as_matmul"])
def test_fm16_cnn_matches_the_official_network(reference_dir, conv):
  z = np.load(os.path.join(reference_dir, "graph_construction", "fm16_cnn.npz"))
  with open(os.path.join(reference_dir, "graph_construction", "fm16_cnn.json")) as f:
    meta = json.load(f)
  params = _flax_from_torch_flat(z["cnn_params_flat"], meta["torch_params"])
  model = CNN((16, 32, 32), conv=conv)
  # Same parameter tree as the model's own init (so the graph builder sees nn.Conv/nn.Dense either way).
  mine = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert jax.tree.structure(mine) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, params)
  x = jnp.asarray(z["cnn_input_nchw"].transpose(0, 2, 3, 1))
  np.testing.assert_allclose(model.apply(params, x), z["cnn_logits"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("strides,padding", [((2, 2), "VALID"), ((1, 1), "SAME"), ((1, 2), ((1, 0), (2, 1)))])
def test_conv_as_matmul_equals_xla_conv(strides, padding):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (3, 11, 10, 4))
  w = jax.random.normal(kw, (3, 3, 4, 5))
  dn = ("NHWC", "HWIO", "NHWC")
  want = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
  got = conv_as_matmul(x, w, strides, padding, dimension_numbers=dn)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  gw = jax.grad(lambda w: jnp.sum(jnp.sin(conv_as_matmul(x, w, strides, padding))))(w)
  gw_ref = jax.grad(lambda w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, strides, padding,
                                                                           dimension_numbers=dn))))(w)
  np.testing.assert_allclose(gw, gw_ref, atol=1e-4, rtol=1e-4)


def test_parameter_counts_match_the_paper():
  def count(features, shape):
    p = CNN(features).init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    return sum(a.size for a in jax.tree.leaves(p))

  assert count((16, 32, 32), (28, 28, 1)) == 14_378  # FM/16: "14k params"
  assert count((32, 64, 64), (32, 32, 3)) == 56_970  # C10/32: "57k params"


@pytest.fixture(scope="module")
def fm16():
  from conftest import need

  from optax_nowcast.tasks import datasets
  need(os.path.join(datasets.FASHION_MNIST_SYSTEM_DIR, "t10k-images-idx3-ubyte.gz"), "Fashion-MNIST")
  return make_task("FM-16")


def test_vision_batches_are_epoch_permutations_and_chunking_invariant(fm16):
  per_epoch = 60000 // 128
  idx = fm16.batch_indices(seed=3, start=0, num_steps=per_epoch)
  assert idx.shape == (per_epoch, 128) and idx.dtype == np.int32
  assert len(np.unique(idx)) == idx.size  # each example at most once per epoch
  a = fm16.batch_indices(3, per_epoch - 5, 10)  # across an epoch boundary
  b = np.concatenate([fm16.batch_indices(3, per_epoch - 5, 4), fm16.batch_indices(3, per_epoch - 1, 6)])
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(fm16.batch_indices(4, 0, 2), fm16.batch_indices(3, 0, 2))


def test_vision_task_trains_and_evaluates(fm16):
  assert fm16.spec.steps == 10_000 and fm16.spec.batch_size == 128 and fm16.spec.learning_rate == 6e-3
  params = fm16.init(jax.random.PRNGKey(0))
  tx = fm16.optimizer()
  state = tx.init(params)
  idx = jnp.asarray(fm16.batch_indices(0, 0, 30))

  @jax.jit
  def step(carry, i):
    p, s = carry
    loss, g = jax.value_and_grad(fm16.loss)(p, i)
    u, s = tx.update(g, s, p)
    return (jax.tree.map(jnp.add, p, u), s), loss

  (params, _), losses = jax.lax.scan(step, (params, state), idx)
  assert losses[-5:].mean() < losses[:5].mean() - 0.3
  ev = jax.jit(fm16.evaluate)(params)
  assert 0.3 < float(ev["metric"]) <= 1.0 and np.isfinite(float(ev["loss"]))


def test_lm_task_predicts_the_next_character(data_dir):
  task = make_task("LM-3-24", data_dir, steps=100)
  assert task.spec.metric == "perplexity" and not task.spec.higher_is_better
  params = task.init(jax.random.PRNGKey(0))
  # At init the model is near-uniform over the 65 characters: loss ~ log(65), perplexity ~ 65.
  ev = jax.jit(task.evaluate)(params)
  assert abs(float(ev["loss"]) - np.log(65)) < 0.1 and abs(float(ev["metric"]) - 65) < 7
  idx = task.batch_indices(0, 0, 1)[0]
  assert idx.shape == (32,) and idx.max() < task.num_train
  np.testing.assert_array_equal(task.batch_indices(0, 5, 3), task.batch_indices(0, 0, 8)[5:])
  # Causality: changing the last input token changes no earlier logits.
  tokens = jnp.arange(64)[None] % 65
  a = task.model.apply(params, tokens)
  b = task.model.apply(params, tokens.at[0, -1].set(7))
  np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-6)
  assert not np.allclose(a[0, -1], b[0, -1])


def test_make_task_errors():
  with pytest.raises(ValueError, match="Unknown task 'FM16'.*FM-16"):
    make_task("FM16")
  with pytest.raises(ValueError, match="Unknown TaskSpec field.*'step'"):
    make_task("digits", step=10)


def test_specs_match_the_nino_paper():
  for name, lr, target in [("FM-16", 6e-3, 0.895), ("FM-32", 6e-3, 0.905), ("C10-16", 3e-3, 0.660),
                           ("C10-32", 3e-3, 0.725)]:
    s = TASKS[name]
    assert (s.steps, s.batch_size, s.learning_rate, s.weight_decay, s.paper_target) == (10_000, 128, lr, 0.0,
                                                                                        target)
  for name, shape in [("LM-3-24", (3, 24, 3)), ("LM-2-32", (2, 32, 2)), ("LM-3-64", (3, 64, 4))]:
    assert TASKS[name].lm_shape == shape and TASKS[name].weight_decay == 1e-2
