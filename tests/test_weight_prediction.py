"""AdamW weight prediction: exactness in the frozen-moment limit, the closed form, state search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_nowcast import weight_prediction as wp

PARAMS = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}
GRAD = {"w": jnp.array([0.2, -0.7, 1.5]), "b": jnp.array(-0.05)}


def _advance(tx, params, n, grad=GRAD):
  state = tx.init(params)
  for _ in range(n):
    updates, state = tx.update(grad, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("s", [1, 2, 3, 7])
def test_frozen_gradient_b1_b2_zero_equals_real_steps(s):
  # With b1 = b2 = 0 the moments are the last gradient, so s real steps with that gradient move
  # the weights exactly as predicted.
  lr = 0.01
  tx = optax.adamw(lr, b1=0.0, b2=0.0, weight_decay=0.0)
  params, state = _advance(tx, PARAMS, 4)
  predicted = wp.predict(params, state, s, learning_rate=lr, b1=0.0, b2=0.0)
  real, _ = _advance(tx, params, s)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), predicted, real)


def test_matches_closed_form_in_general():
  lr, b1, b2, eps, s = 3e-3, 0.9, 0.999, 1e-8, 3
  tx = optax.adam(lr)
  rng = np.random.default_rng(0)
  params = PARAMS
  state = tx.init(params)
  for _ in range(5):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=np.shape(p)), jnp.float32), params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  adam = state[0]
  t = 5
  for name in params:
    m = np.asarray(adam.mu[name], np.float64) / (1 - b1 ** t)
    v = np.asarray(adam.nu[name], np.float64) / (1 - b2 ** t)
    expected = np.asarray(params[name]) - s * lr * m / (np.sqrt(v) + eps)
    got = wp.predict(params, state, s, learning_rate=lr)[name]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_weight_decay_term_is_opt_in():
  tx = optax.adamw(0.01, weight_decay=0.1)
  params, state = _advance(tx, PARAMS, 3)
  plain = wp.predict(params, state, 2, learning_rate=0.01)
  decayed = wp.predict(params, state, 2, learning_rate=0.01, weight_decay=0.1)
  np.testing.assert_allclose(np.asarray(plain["w"]) - np.asarray(decayed["w"]),
                             2 * 0.01 * 0.1 * np.asarray(params["w"]), rtol=1e-4)


def test_identity_at_step_zero():
  tx = optax.adam(0.1)
  predicted = wp.predict(PARAMS, tx.init(PARAMS), 3, learning_rate=0.1)
  jax.tree.map(np.testing.assert_array_equal, predicted, PARAMS)


def test_hyperparameters_from_inject_hyperparams_and_schedules():
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=0.02, b1=0.5, b2=0.9)
  params, state = _advance(tx, PARAMS, 3)
  explicit = optax.adamw(0.02, b1=0.5, b2=0.9)
  _, explicit_state = _advance(explicit, PARAMS, 3)
  auto = wp.predict(params, state, 2)
  manual = wp.predict(params, explicit_state, 2, learning_rate=0.02, b1=0.5, b2=0.9)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), auto, manual)
  schedule = lambda count: 0.02 * jnp.ones_like(count, jnp.float32)
  sched = wp.predict(params, explicit_state, 2, learning_rate=schedule, b1=0.5, b2=0.9)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sched, manual)


def test_finds_moments_inside_chains_and_multisteps():
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01)), 2)
  params, state = _advance(tx, PARAMS, 4)
  adam, hyper = wp.find_adam_state(state)
  assert int(adam.count) == 2 and hyper == {}
  out = wp.predict(params, state, 1, learning_rate=0.01)
  assert jax.tree.structure(out) == jax.tree.structure(params)


def test_is_jittable_and_keeps_dtypes():
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  tx = optax.adam(0.01)
  params, state = _advance(tx, params, 2, grad={"w": jnp.full(4, 0.5, jnp.bfloat16)})
  out = jax.jit(lambda p, s: wp.predict(p, s, 2, learning_rate=0.01))(params, state)
  assert out["w"].dtype == jnp.bfloat16


def test_value_and_grad_at_predicted():
  loss_fn = lambda p, x: jnp.sum((p["w"] - x) ** 2) + p["b"] ** 2
  tx = optax.adam(0.05)
  params, state = _advance(tx, PARAMS, 3)
  loss, grads = jax.jit(wp.value_and_grad_at_predicted(loss_fn, 2, learning_rate=0.05))(
      params, state, jnp.ones(3))
  predicted = wp.predict(params, state, 2, learning_rate=0.05)
  ref_loss, ref_grads = jax.value_and_grad(loss_fn)(predicted, jnp.ones(3))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, ref_grads)


def test_errors():
  with pytest.raises(ValueError, match=r"no optax.ScaleByAdamState.*optax.adam, optax.adamw"):
    wp.predict(PARAMS, optax.sgd(0.1).init(PARAMS), 1, learning_rate=0.1)
  with pytest.raises(ValueError, match=r"learning_rate is not in the optimizer state.*"
                                       r"pass learning_rate="):
    wp.predict(PARAMS, optax.adam(0.1).init(PARAMS), 1)
  two = optax.chain(optax.adam(0.1), optax.adam(0.1))
  with pytest.raises(ValueError, match=r"holds 2 Adam states"):
    wp.find_adam_state(two.init(PARAMS))


def test_flax_nnx_functional_training_step():
  """The NNX example of the docs: split the model, jit one step with gradients at predicted weights."""
  from flax import nnx

  from optax_nowcast.tasks import load_digits_split

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(64, 32, rngs=rngs)
      self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  data = load_digits_split()
  x, y = jnp.asarray(data.x_train[:256]), jnp.asarray(data.y_train[:256])
  graphdef, params = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
  lr = 1e-2
  tx = optax.adamw(lr, weight_decay=1e-4)
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  vg = wp.value_and_grad_at_predicted(loss_fn, steps=2, learning_rate=lr)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y):
    loss, grads = vg(params, opt_state, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(30):
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  # The gradient really is taken at the predicted weights, not at params.
  pred = wp.predict(params, opt_state, 2, learning_rate=lr)
  _, g = vg(params, opt_state, x, y)
  g_pred = jax.grad(loss_fn)(pred, x, y)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_pred), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
