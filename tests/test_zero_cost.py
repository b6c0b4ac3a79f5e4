"""What a step that does not jump costs, read from the compiled program (issue: zero cost between jumps).

The train step is the one a user writes: jitted, state donated, ``tx.update`` then ``apply_updates``.
A ``nowcast_phase="plain"`` step must leave the history alone (each history buffer goes straight to the
output it is aliased with), need no scratch beyond the base optimizer's and move nothing between host and
device; a ``"record"`` step writes one slot in place and needs no predictor scratch; no step ever copies
the history.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast import schedules
from optax_nowcast.tasks import MLP

INTERVAL, CTX = 4, 3


def _train_step(tx, model, x, y, phase):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    kwargs = {} if phase is None else {"nowcast_phase": phase}
    updates, opt_state = tx.update(grads, opt_state, params, value=loss, **kwargs)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def _compiled(tx, phase, hidden=(256, 256), batch=16):
  model = MLP(hidden)
  x, y = jnp.ones((batch, 64)), jnp.zeros((batch,), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x[:1])
  state = tx.init(params)
  return _train_step(tx, model, x, y, phase).lower(params, state).compile(), params


def _entry(hlo: str) -> list[str]:
  lines = hlo.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
  return lines[start + 1:end]


def _history_names(entry: list[str]) -> list[str]:
  names = [m.group(1) for line in entry
           if (m := re.match(r"\s*(%\S+) = .* parameter\(\d+\).*op_name=\"opt_state\[1\]\.history", line))]
  return names


def _history_shapes(params) -> set[str]:
  return {f"[{CTX},{','.join(map(str, p.shape))}]" for p in jax.tree.leaves(params)}


def _assert_no_history_copy(hlo: str, params) -> None:
  for shape in _history_shapes(params):
    assert not re.search(rf"= \w+{re.escape(shape)}\S* copy\(", hlo), f"a copy of a history {shape}"


def _nowcast(**kw):
  return onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX, **kw)


ADAM = optax.adam(1e-3)


@pytest.mark.parametrize("options", [{}, {"history_dtype": jnp.bfloat16}, {"history_memory": "host"},
                                     {"rollback_factor": 1.5, "rollback_window": 1}],
                         ids=["f32", "bf16", "host", "rollback"])
def test_plain_step_leaves_the_history_alone(options):
  tx = optax.chain(ADAM, _nowcast(**options))
  compiled, params = _compiled(tx, "plain")
  hlo = compiled.as_text()
  entry = _entry(hlo)
  names = _history_names(entry)
  assert len(names) == len(jax.tree.leaves(params))
  root = next(line for line in entry if line.lstrip().startswith("ROOT"))
  for name in names:
    users = [line for line in entry if re.search(re.escape(name) + r"[,)\s]", line)
             and not line.lstrip().startswith(name + " ")]
    assert users == [root], f"{name} is read by {users[:2]}"
  # Nothing of the history is copied, moved or branched on anywhere in the program.
  _assert_no_history_copy(hlo, params)
  assert "MoveToHost" not in hlo and "MoveToDevice" not in hlo and "conditional(" not in hlo
  base, _ = _compiled(ADAM, None)
  assert compiled.memory_analysis().temp_size_in_bytes <= base.memory_analysis().temp_size_in_bytes + 4096
  # Every history buffer is donated and handed back in place.
  assert compiled.memory_analysis().alias_size_in_bytes >= sum(
      x.size * x.dtype.itemsize for x in jax.tree.leaves(tx.init(params)[1].history))


@pytest.mark.parametrize("options", [{}, {"history_dtype": jnp.bfloat16}, {"history_memory": "host"}],
                         ids=["f32", "bf16", "host"])
def test_record_step_writes_one_slot_and_needs_no_predictor_scratch(options):
  """A ``"record"`` step: the recording's dynamic-update-slice in place, no jump compiled (no predictor),
  no copy of the history, and scratch at most a few percent of a parameter copy beyond the base step's
  (the host history: plus the state on its way to the host)."""
  tx = optax.chain(ADAM, _nowcast(**options))
  compiled, params = _compiled(tx, "record")
  hlo = compiled.as_text()
  _assert_no_history_copy(hlo, params)
  assert "dynamic-update-slice" in hlo and hlo.count("conditional(") == 1
  base, _ = _compiled(ADAM, None)
  n_bytes = sum(p.size * 4 for p in jax.tree.leaves(params))
  extra = compiled.memory_analysis().temp_size_in_bytes - base.memory_analysis().temp_size_in_bytes
  assert extra <= (1.1 if "history_memory" in options else 0.15) * n_bytes, (extra, n_bytes)


@pytest.mark.parametrize("options", [{}, {"history_dtype": jnp.bfloat16}, {"history_memory": "host"}],
                         ids=["f32", "bf16", "host"])
def test_full_step_never_copies_the_history(options):
  """The step that may record or jump: the recording writes one slot in place, the jump reads the slots
  as stored (no reordering copy) and stages itself in slot 0. Its scratch beyond the base optimizer's is
  the prediction, about one float32 copy of the parameters (plus, with a host history, the jump carried
  on the device), whatever the history dtype: never ``ctx`` copies."""
  tx = optax.chain(ADAM, _nowcast(**options))
  compiled, params = _compiled(tx, "full")
  hlo = compiled.as_text()
  _assert_no_history_copy(hlo, params)
  n_bytes = sum(p.size * 4 for p in jax.tree.leaves(params))
  base, _ = _compiled(ADAM, None)
  extra = compiled.memory_analysis().temp_size_in_bytes - base.memory_analysis().temp_size_in_bytes
  assert extra <= (2.25 if "history_memory" in options else 1.25) * n_bytes, (extra, n_bytes)


def test_a_prediction_that_is_a_view_of_the_history_does_not_copy_it():
  """A predictor returning a slice of the history (here its newest state) must not make XLA copy the
  history to write the jump into slot 0."""
  last = onc.Predictor(init=lambda p: (), predict=lambda h, t, k, s: (jax.tree.map(lambda a: a[-1], h), s),
                       name="last")
  tx = optax.chain(ADAM, onc.nowcast(last, interval=INTERVAL, ctx=CTX))
  compiled, params = _compiled(tx, "full")
  _assert_no_history_copy(compiled.as_text(), params)


def _run(tx, n_steps, mark, params=None, seed=0):
  model = MLP((16,))
  x = jax.random.normal(jax.random.PRNGKey(seed), (32, 64))
  y = jax.random.randint(jax.random.PRNGKey(seed + 1), (32,), 0, 10)
  params = model.init(jax.random.PRNGKey(2), x[:1]) if params is None else params
  state = tx.init(params)

  @functools.partial(jax.jit, static_argnames="phase")
  def step(params, state, phase):
    loss, grads = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(params)
    updates, state = tx.update(grads, state, params, value=loss, nowcast_phase=phase)
    return optax.apply_updates(params, updates), state

  for s in range(n_steps):
    params, state = step(params, state, phase=mark(s))
  return params, state


@pytest.mark.parametrize("kw", [
    {},
    {"period": 20},
    {"period": schedules.dynamic_period(12, 24, total_steps=60)},
    {"rollback_factor": 1.0, "rollback_window": 1, "horizon": 40},
    {"history_memory": "host"},
    {"rollback_factor": 1.0, "rollback_window": 1, "horizon": 40, "base": True},
], ids=["default", "period", "dynamic", "rollback", "host", "rollback_base"])
def test_phases_from_nowcast_phase_change_nothing(kw):
  """Running each step in the phase :func:`nowcast_phase` gives it makes the same run as the full step
  everywhere: the same recordings, jumps and rollbacks, the parameters equal to float32 rounding (the
  compiled programs may fuse Adam's arithmetic differently; a plain step is bitwise the base
  optimizer's, see below)."""
  kw = dict(kw)
  if kw.pop("base", False):  # the base inside: a rollback restores its state too
    tx = _nowcast(base=optax.adam(3e-2), **kw)
  else:
    tx = optax.chain(optax.adam(3e-2), _nowcast(**kw))
  window = kw.get("rollback_window")
  phase = functools.partial(onc.nowcast_phase, interval=INTERVAL, ctx=CTX, period=kw.get("period"),
                            rollback_window=window)
  n = 75
  p_auto, s_auto = _run(tx, n, lambda s: "full")
  p_marked, s_marked = _run(tx, n, phase)
  assert sum(phase(s) != "plain" for s in range(n)) < n / 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
               (p_auto, s_auto), (p_marked, s_marked))
  for a, b in zip(jax.tree.leaves(onc.find_nowcast_state(s_auto).window),
                  jax.tree.leaves(onc.find_nowcast_state(s_marked).window), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  nc = onc.find_nowcast_state(s_marked)
  assert int(nc.n_jumps) >= 2 and int(nc.n_missed) == 0
  if "rollback_factor" in kw:
    assert int(nc.n_rollbacks) >= 1


def test_a_step_marked_with_the_wrong_phase_is_counted_and_makes_no_jump():
  tx = optax.chain(optax.adam(3e-2), _nowcast())
  phase = functools.partial(onc.nowcast_phase, interval=INTERVAL, ctx=CTX)
  p_all_plain, s = _run(tx, 40, lambda s: "plain")
  nc = onc.find_nowcast_state(s)
  assert int(nc.n_jumps) == 0 and int(nc.n_missed) == 9  # steps 4, 8, ..., 36
  # One missed recording (step 16, the first of the second window) loses that window's jump (24) only;
  # the next window (28, 32, 36) is whole again.
  p_one, s_one = _run(tx, 40, lambda s: "plain" if s == 16 else phase(s))
  nc = onc.find_nowcast_state(s_one)
  assert int(nc.n_missed) == 1 and int(nc.n_jumps) == 2 and int(nc.last_jump_step) == 36
  assert nc.window.slot_steps.tolist()[1:] == [32, 36]
  # A jump step run as "record" records but cannot jump: counted, and the next window starts afresh.
  p_rec, s_rec = _run(tx, 40, lambda s: "record" if s == 24 else phase(s))
  nc = onc.find_nowcast_state(s_rec)
  assert int(nc.n_missed) == 1 and int(nc.n_jumps) == 2 and int(nc.last_jump_step) == 36
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves((p_all_plain, p_one, p_rec)))


def test_all_plain_is_the_base_optimizer():
  tx = optax.chain(optax.adam(3e-2), _nowcast())
  p_plain, _ = _run(tx, 30, lambda s: "plain")
  p_adam, _ = _run(optax.adam(3e-2), 30, lambda s: "full")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_plain, p_adam)


@pytest.mark.parametrize("period", [None, 20, schedules.dynamic_period(12, 24, total_steps=60)])
@pytest.mark.parametrize("window", [None, 2])
def test_nowcast_phase_agrees_with_the_device(period, window):
  """The host answer equals the traced schedule's, step by step (recordings, jumps, rollback checks)."""
  resolved = schedules.resolve_period(period, CTX, INTERVAL)
  steps = np.arange(200)
  jumps = np.asarray(jax.vmap(lambda s: resolved.next_jump(s)[0])(steps))
  to_jump = jumps - steps
  record = (to_jump % INTERVAL == 0) & (to_jump <= (CTX - 1) * INTERVAL) & (to_jump > 0)
  for limit in (100.0, None):  # with a rollback limit every step of the window may roll back
    full = to_jump == 0
    if window is not None:
      first = 0 if limit is not None else window
      full |= np.isin(steps, (steps[to_jump == 0][:, None] + np.arange(first, window + 1) + 1).ravel())
    want = np.where(full, "full", np.where(record, "record", "plain"))
    host = np.array([onc.nowcast_phase(int(s), interval=INTERVAL, ctx=CTX, period=period,
                                       rollback_window=window, rollback_limit=limit) for s in steps])
    np.testing.assert_array_equal(host, want)


@pytest.mark.parametrize("bad", ["Plain", 1])
def test_nowcast_phase_must_be_a_static_phase_name(bad):
  tx = _nowcast()
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match="nowcast_phase must be None or one of"):
    tx.update(params, state, params, nowcast_phase=bad)
  with pytest.raises(ValueError, match="static_argnames"):
    jax.jit(lambda s, f: tx.update(params, s, params, nowcast_phase=f))(state, True)


def test_plain_step_under_vmap():
  tx = _nowcast()
  params = {"w": jnp.ones((4, 3))}
  states = jax.vmap(tx.init)(params)
  upd, new = jax.vmap(lambda u, s, p: tx.update(u, s, p, nowcast_phase="plain"))(params, states, params)
  np.testing.assert_array_equal(np.asarray(upd["w"]), np.ones((4, 3)))
  assert new.count.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("phase", ["plain", "record", "full"])
def test_base_inside_costs_no_scratch(phase):
  """``nowcast(..., base=adam, rollback_factor=...)`` keeps a copy of Adam's state for the rollback: it is
  donated and handed back in place at every step, and no step needs more scratch than the chain's."""
  kw = {"rollback_factor": 1.5, "rollback_window": 1}
  chained, params = _compiled(optax.chain(ADAM, _nowcast(**kw)), phase)
  inside, _ = _compiled(onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX, base=ADAM, **kw),
                        phase)
  a, b = chained.memory_analysis(), inside.memory_analysis()
  adam_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(ADAM.init(params)))
  assert b.alias_size_in_bytes >= a.alias_size_in_bytes + adam_bytes
  assert b.temp_size_in_bytes <= a.temp_size_in_bytes + 4096, (b.temp_size_in_bytes, a.temp_size_in_bytes)
  if phase != "full":  # a plain or record step does not read the copy
    assert inside.as_text().count(" copy(") == chained.as_text().count(" copy(")
