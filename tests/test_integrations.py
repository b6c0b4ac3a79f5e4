"""nowcast inside the ways people train: optax optimizers and wrappers, Flax Linen and NNX, lax.scan.

Each test trains on a real problem (sklearn digits, or a quadratic for the optimizer sweep), records
the parameter trajectory and checks that every jump lands on an independent numpy line fit of the
states the protocol says were recorded, and that jumps happen nowhere else.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import numpy_linefit
from flax import nnx
from flax.training import train_state
from sklearn.datasets import load_digits

import optax_nowcast as onc

INTERVAL, CTX, K = 3, 3, 2
PERIOD = INTERVAL * CTX


def _nowcast():
  return onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX, horizon=K)


def _assert_jumps_on_linefit(traj, n_calls, state_at=lambda c: c, call_of=lambda c: c):
  """traj[i] = flat params after outer call i; inner update c sees state_at(c), is outer call_of(c)."""
  jumps = [J for J in range(PERIOD, n_calls) if J % PERIOD == 0 and call_of(J) + 1 < len(traj)]
  assert jumps, "the run is too short to contain a jump"
  for J in jumps:
    states = [traj[state_at(J - i * INTERVAL)] for i in reversed(range(CTX))]
    np.testing.assert_allclose(traj[call_of(J) + 1], numpy_linefit(states, K), rtol=2e-4,
                               atol=2e-5)
  return jumps


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@functools.lru_cache(maxsize=1)
def _digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x[:256] / 16.0, jnp.float32), jnp.asarray(y[:256], jnp.int32)


def _quadratic_grad(params):
  return jax.tree.map(lambda p: 2.0 * (p - 1.5) + 0.1 * jnp.sin(3 * p), params)


@pytest.mark.parametrize("base", [
    optax.adam(0.05), optax.adamw(0.05, weight_decay=1e-2), optax.sgd(0.05, momentum=0.9),
    optax.lion(0.01)], ids=["adam", "adamw", "sgd", "lion"])
def test_optimizers(base):
  tx = optax.chain(base, _nowcast())
  params = {"w": jnp.linspace(-1, 1, 5), "b": jnp.zeros(())}
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(_quadratic_grad(p), s, p))
  traj = [_flat(params)]
  for _ in range(3 * PERIOD + 1):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    traj.append(_flat(params))
  assert len(_assert_jumps_on_linefit(traj, 3 * PERIOD + 1)) == 3
  assert int(state[1].n_jumps) == 3


def test_multisteps_counts_inner_steps():
  every = 2
  tx = optax.MultiSteps(optax.chain(optax.adam(0.05), _nowcast()), every_k_schedule=every)
  params = {"w": jnp.linspace(-1, 1, 4)}
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(_quadratic_grad(p), s, p))
  traj = [_flat(params)]
  for _ in range(every * (2 * PERIOD + 1)):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    traj.append(_flat(params))
  # Inner update c runs in outer call every*c + every - 1 and sees the params after every*c calls.
  jumps = _assert_jumps_on_linefit(traj, 2 * PERIOD + 1, state_at=lambda c: every * c,
                                   call_of=lambda c: every * c + every - 1)
  assert jumps == [PERIOD, 2 * PERIOD]


@pytest.mark.parametrize("wrap_whole_chain", [False, True])
def test_inject_hyperparams(wrap_whole_chain):
  if wrap_whole_chain:
    tx = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(optax.adam(learning_rate), _nowcast()))(
            learning_rate=0.05)
  else:
    tx = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=0.05), _nowcast())
  params = {"w": jnp.linspace(-1, 1, 4)}
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(_quadratic_grad(p), s, p))
  traj = [_flat(params)]
  for i in range(2 * PERIOD + 1):
    if i == PERIOD + 1:  # change the learning rate between jumps, as a schedule would
      hp = state.hyperparams if wrap_whole_chain else state[0].hyperparams
      hp["learning_rate"] = jnp.asarray(0.02)
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    traj.append(_flat(params))
  assert len(_assert_jumps_on_linefit(traj, 2 * PERIOD + 1)) == 2


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_flax_linen_train_state():
  x, y = _digits()
  model = _MLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.PRNGKey(0), x[:1]),
      tx=optax.chain(optax.adam(0.01), _nowcast()))

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, xb, yb):
    grads = jax.grad(lambda p: _xent(state.apply_fn(p, xb), yb))(state.params)
    return state.apply_gradients(grads=grads)

  traj = [_flat(state.params)]
  for i in range(2 * PERIOD + 1):
    state = train_step(state, x[(i * 32) % 224:][:32], y[(i * 32) % 224:][:32])
    traj.append(_flat(state.params))
  assert len(_assert_jumps_on_linefit(traj, 2 * PERIOD + 1)) == 2
  assert int(state.opt_state[1].n_jumps) == 2


def test_flax_nnx_optimizer():
  x, y = _digits()

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(64, 16, rngs=rngs)
      self.l2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(optax.adam(0.01), _nowcast()), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, xb, yb):
    grads = nnx.grad(lambda m: _xent(m(xb), yb))(model)
    optimizer.update(model, grads)

  flat = lambda: _flat(nnx.state(model, nnx.Param))
  traj = [flat()]
  for i in range(2 * PERIOD + 1):
    train_step(model, optimizer, x[(i * 32) % 224:][:32], y[(i * 32) % 224:][:32])
    traj.append(flat())
  assert len(_assert_jumps_on_linefit(traj, 2 * PERIOD + 1)) == 2
  assert int(optimizer.opt_state[1].n_jumps[...]) == 2


def test_flax_nnx_optimizer_with_plain_steps():
  """``nnx.Optimizer.update`` forwards ``nowcast_phase``: a loop that runs each step in its phase (three
  compiled programs) makes the same jumps as one that does not."""
  x, y = _digits()

  def train(mark):
    model = nnx.Sequential(nnx.Linear(64, 16, rngs=nnx.Rngs(0)), nnx.relu,
                           nnx.Linear(16, 10, rngs=nnx.Rngs(1)))
    optimizer = nnx.Optimizer(model, optax.chain(optax.adam(0.01), _nowcast()), wrt=nnx.Param)

    @nnx.jit(static_argnames="phase")
    def train_step(model, optimizer, xb, yb, phase):
      grads = nnx.grad(lambda m: _xent(m(xb), yb))(model)
      optimizer.update(model, grads, nowcast_phase=phase)

    for i in range(2 * PERIOD + 1):
      phase = onc.nowcast_phase(i, interval=INTERVAL, ctx=CTX) if mark else None
      train_step(model, optimizer, x[(i * 32) % 224:][:32], y[(i * 32) % 224:][:32], phase=phase)
    return _flat(nnx.state(model, nnx.Param)), optimizer.opt_state[1]

  (p_marked, s_marked), (p_full, s_full) = train(True), train(False)
  assert int(s_marked.n_jumps[...]) == int(s_full.n_jumps[...]) == 2 and int(s_marked.window.missed[...]) == 0
  np.testing.assert_allclose(p_marked, p_full, rtol=1e-5, atol=1e-6)


def test_lax_scan_loop_equals_python_loop():
  x, y = _digits()
  model = _MLP()
  params = model.init(jax.random.PRNGKey(1), x[:1])
  tx = optax.chain(optax.adam(0.01), _nowcast())
  batches = (x[:224].reshape(7, 32, 64), y[:224].reshape(7, 32))

  def step(carry, i):
    params, opt_state = carry
    xb, yb = batches[0][i % 7], batches[1][i % 7]
    grads = jax.grad(lambda p: _xent(model.apply(p, xb), yb))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), _flat_jnp(params)

  n = 2 * PERIOD + 1
  run = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(n)), donate_argnums=0)
  start = _flat(params)
  fresh = lambda: jax.tree.map(jnp.array, params)
  (final, opt_state), flat_traj = run((fresh(), tx.init(params)))  # donated: pass copies
  traj = [start] + list(np.asarray(flat_traj))
  assert len(_assert_jumps_on_linefit(traj, n)) == 2
  carry = (fresh(), tx.init(params))
  jstep = jax.jit(step)
  for i in range(n):
    carry, _ = jstep(carry, i)
  np.testing.assert_allclose(_flat(carry[0]), _flat(final), rtol=1e-5, atol=1e-6)
  assert int(opt_state[1].n_jumps) == 2


def _flat_jnp(tree):
  return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(tree)])
