"""Faults tried on purpose: non-finite gradients and losses at every phase of a period, corrupted files."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_nowcast as onc
from optax_nowcast import weights_io

INTERVAL, CTX = 4, 3  # a recording every 4 steps, a jump every 12
PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}


def _grads(p, t):
  return jax.tree.map(lambda x: jnp.sin(x + 0.1 * t) + 0.2, p)


def _loss(p, t):
  return jnp.sum(p["w"] ** 2) + 0.01 * t


def _run(bad_step: int | None, bad, where: str, steps: int = 30, guard: bool = False, **kw):
  tx = optax.chain(optax.adam(1e-2), onc.nowcast(onc.predictors.linefit(), interval=INTERVAL, ctx=CTX,
                                                 horizon=2, rollback_factor=1.5, rollback_window=2, **kw))
  if guard:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=5)

  @jax.jit
  def step(p, s, t, poison):
    g = _grads(p, t)
    loss = _loss(p, t)
    if where == "grad":
      g = jax.tree.map(lambda x: jnp.where(poison, bad, x), g)
    else:
      loss = jnp.where(poison, bad, loss)
    u, s = tx.update(g, s, p, value=loss)
    return optax.apply_updates(p, u), s

  p, s = PARAMS, tx.init(PARAMS)
  trace = []
  for t in range(steps):
    before = p
    p, s = step(p, s, jnp.float32(t), jnp.bool_(t == bad_step))
    nc = onc.find_nowcast_state(s)
    trace.append((before, p, int(nc.n_jumps), int(nc.n_rejected), nc))
  return trace


def _finite(tree) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


JUMPS = [t for t in range(30) if onc.nowcast_phase(t, interval=INTERVAL, ctx=CTX) == "full"
         and t > 0 and t % (INTERVAL * CTX) == 0]


# between recordings, at a recording, at the jump, in the rollback window after it, in the next period
PHASES = [2, 4, 12, 13, 15, 17]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("bad_step", PHASES)
def test_non_finite_gradients_never_jump(bad, bad_step):
  """A non-finite gradient makes Adam's parameters non-finite from that step on (the base optimizer's
  doing); every jump whose window holds a non-finite state is rejected (counted), and no jump ever writes
  a non-finite value: a step that counts a jump leaves finite parameters."""
  trace = _run(bad_step, bad, "grad")
  jumps = rejected = 0
  for t, (_, after, n_j, n_r, _) in enumerate(trace):
    if n_j > jumps:
      assert _finite(after), t
      assert t <= bad_step, (t, bad_step)  # every later window holds a non-finite state
    if n_r > rejected:
      assert t >= bad_step, (t, bad_step)
    jumps, rejected = n_j, n_r
  # at the jump step itself the window was recorded before the fault: that jump is made
  assert trace[-1][2] == sum(j <= bad_step for j in JUMPS) and trace[-1][3] >= 1


@pytest.mark.parametrize("bad_step", PHASES)
def test_guarded_run_keeps_jumping(bad_step):
  """With ``optax.apply_if_finite`` around the chain (a user's guard), the step with the non-finite
  gradient is skipped whole, nowcast's state included: the parameters and the history stay finite and the
  jumps go on."""
  trace = _run(bad_step, np.nan, "grad", guard=True)
  assert _finite(trace[-1][1]) and _finite(trace[-1][4].history)
  assert trace[-1][2] >= len(JUMPS) - 1 and trace[-1][3] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("bad_step", PHASES)
def test_non_finite_losses(bad, bad_step):
  """A non-finite loss never reaches the parameters or the history (they do not depend on it), never
  poisons the running mean of the loss, and inside a rollback window (the 3 calls after a jump) it counts
  as a loss that rose: the jump is rolled back."""
  trace = _run(bad_step, bad, "loss")
  assert all(_finite(after) and _finite(nc.history) for _, after, _, _, nc in trace)
  nc = trace[-1][4]
  assert bool(jnp.isfinite(nc.rollback.loss_ema))
  in_window = any(0 <= bad_step - j - 1 <= 2 for j in JUMPS)
  assert int(nc.n_rollbacks) == int(in_window), (bad_step, int(nc.n_rollbacks))
  clean = _run(None, bad, "loss")
  assert int(clean[-1][4].n_rollbacks) == 0
  if not in_window:  # elsewhere the run is the clean run, bit for bit
    for a, b in zip(jax.tree.leaves(trace[-1][1]), jax.tree.leaves(clean[-1][1]), strict=True):
      np.testing.assert_array_equal(a, b)


def test_corrupted_shipped_weights_are_named(tmp_path):
  """A truncated or altered weights file fails at load with its path (sha256 recorded in its .json)."""
  src = weights_io.shipped_path("lfd2")
  for name, mutate in [("truncated", lambda b: b[: len(b) // 2]), ("flipped", lambda b: b[:-1] + b"\x00")]:
    d = tmp_path / name
    d.mkdir()
    dst = d / "lfd2.msgpack"
    shutil.copy(os.path.splitext(src)[0] + ".json", d / "lfd2.json")
    with open(src, "rb") as f:
      dst.write_bytes(mutate(f.read()))
    with pytest.raises(ValueError, match=rf"{dst}.*corrupted or truncated.*sha256"):
      onc.predictors.lfd2(str(dst))


def test_corrupted_file_without_a_hash_is_named(tmp_path):
  """A record without a sha256 (older files): the file still fails with its path, not msgpack's error."""
  src = weights_io.shipped_path("lfd2")
  rec = weights_io.read_meta(src)
  rec.pop("sha256")
  import json
  (tmp_path / "lfd2.json").write_text(json.dumps(rec))
  with open(src, "rb") as f:
    (tmp_path / "lfd2.msgpack").write_bytes(f.read()[:100])
  with pytest.raises(ValueError, match=r"lfd2.msgpack cannot be read as 'lfd2' weights"):
    onc.predictors.lfd2(str(tmp_path / "lfd2.msgpack"))


def test_corrupted_official_checkpoint_is_named(tmp_path):
  np.savez(tmp_path / "ok.npz", a=np.ones(3))
  data = (tmp_path / "ok.npz").read_bytes()
  (tmp_path / "bad.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"bad.npz cannot be read as an .npz checkpoint"):
    weights_io.read_state_dict(str(tmp_path / "bad.npz"))


def test_corrupted_orbax_checkpoint_is_named(tmp_path):
  """A truncated Orbax checkpoint: ``checkpoint.restore`` names it (Orbax alone raises a bare
  ``JSONDecodeError``); a missing one is a FileNotFoundError."""
  pytest.importorskip("orbax.checkpoint")
  tx = optax.chain(optax.adam(1e-2), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3, horizon=2))
  state = {"params": PARAMS, "opt_state": tx.init(PARAMS)}
  path = tmp_path / "ckpt"
  onc.checkpoint.save(path, state)
  for a, b in zip(jax.tree.leaves(onc.checkpoint.restore(path, state)), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)  # NaN == NaN here (the rollback's loss means start as NaN)
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) // 3)
  with pytest.raises(ValueError, match=rf"checkpoint {path} cannot be restored.*truncated or corrupted"):
    onc.checkpoint.restore(path, state)
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    onc.checkpoint.restore(tmp_path / "nothing", state)
