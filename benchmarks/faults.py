"""Faults tried on purpose, and what is bit-identical: the table of ``benchmarks/results/faults.md``.

    python -m benchmarks.faults            # everything (the multi-process kill-and-resume: about a minute)
    python -m benchmarks.faults --quick    # without the multi-process runs

Each row is a fault injected into a real run (the digits MLP, Adam 3e-3, ``nowcast(linefit_plus(),
interval=4, ctx=3, horizon=2, rollback_factor=1.5, rollback_window=2)``: a recording every 4 steps, a jump
every 12) or a file, and the outcome as observed: jumps made and rejected, rollbacks, whether the
parameters and the history stayed finite, the error raised. The identity rows compare runs that should
agree: host vs device history, a resumed run vs an uninterrupted one, 2 processes vs 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_nowcast as onc
from optax_nowcast import weights_io
from optax_nowcast.tasks import make_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL, CTX, STEPS = 4, 3, 40
PHASES = {2: "between recordings", 4: "at a recording", 12: "at the jump", 13: "in the rollback window",
          17: "in the next period"}


def _tx(memory: str = "device", rollback: bool = True, guard: bool = False) -> optax.GradientTransformation:
  kw = {"rollback_factor": 1.5, "rollback_window": 2} if rollback else {}
  tx = optax.chain(optax.adam(3e-3), onc.nowcast(onc.predictors.linefit_plus(), interval=INTERVAL, ctx=CTX,
                                                 horizon=2, history_memory=memory, **kw))
  return optax.apply_if_finite(tx, max_consecutive_errors=5) if guard else tx


def _train(tx, fault: str | None = None, at: int | None = None, phased: bool = False) -> list[tuple]:
  """Per step: (params, nowcast state). ``fault``: "grad_nan", "grad_inf", "loss_nan", "loss_inf"."""
  task = make_task("digits")
  bad = {"nan": np.nan, "inf": np.inf}[fault.split("_")[1]] if fault else 0.0

  @functools.partial(jax.jit, static_argnames="phase")
  def step(p, s, idx, poison, phase):
    loss, g = jax.value_and_grad(task.loss)(p, idx)
    if fault and fault.startswith("grad"):
      g = jax.tree.map(lambda x: jnp.where(poison, bad, x), g)
    if fault and fault.startswith("loss"):
      loss = jnp.where(poison, bad, loss)
    u, s = tx.update(g, s, p, value=loss, **({"nowcast_phase": phase} if phase else {}))
    return optax.apply_updates(p, u), s

  p = task.init(jax.random.PRNGKey(0))
  s = tx.init(p)
  out = []
  for t in range(STEPS):
    phase = onc.nowcast_phase(t, interval=INTERVAL, ctx=CTX) if phased else None
    p, s = step(p, s, jnp.asarray(task.batch_indices(0, t, 1)[0]), jnp.bool_(t == at), phase=phase)
    out.append((p, s))
  return out


def _finite(tree) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


def _max_diff(a, b) -> float:
  return max(float(jnp.abs(jnp.asarray(x, jnp.float64) - jnp.asarray(y, jnp.float64)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def run_faults() -> list[dict[str, Any]]:
  rows = []
  for fault, at, where in [(None, None, None)] + [(f, t, w) for f in ("grad_nan", "grad_inf", "loss_nan",
                                                                      "loss_inf") for t, w in PHASES.items()]:
    for guard in ((False, True) if fault and fault.startswith("grad") else (False,)):
      trace = _train(_tx(guard=guard), fault, at)
      nc = onc.find_nowcast_state(trace[-1][1])
      jumps_ok = all(_finite(p) for t, (p, s) in enumerate(trace)
                     if int(onc.find_nowcast_state(s).n_jumps) >
                     (int(onc.find_nowcast_state(trace[t - 1][1]).n_jumps) if t else 0))
      label = "no fault (the clean run)" if fault is None else (
          f"{fault.replace('_', ' ')} at step {at} ({where})" + (", apply_if_finite" if guard else ""))
      rows.append({
          "fault": label,
          "jumps": int(nc.n_jumps), "rejected": int(nc.n_rejected), "rollbacks": int(nc.n_rollbacks),
          "params finite at the end": _finite(trace[-1][0]), "history finite": _finite(nc.history),
          "every jump left finite params": jumps_ok})
      print(rows[-1], flush=True)
  return rows


def _error(fn) -> str:
  try:
    fn()
  except Exception as e:  # noqa: BLE001 -- the outcome is the error
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
  return "no error"


def run_files(tmp: str) -> list[dict[str, str]]:
  rows = []
  src = weights_io.shipped_path("lfd2")
  for name, mutate in [("truncated to half", lambda b: b[: len(b) // 2]), ("last byte changed",
                                                                            lambda b: b[:-1] + b"\x01")]:
    d = os.path.join(tmp, name.replace(" ", "_"))
    os.makedirs(d)
    shutil.copy(os.path.splitext(src)[0] + ".json", d)
    with open(src, "rb") as f, open(os.path.join(d, "lfd2.msgpack"), "wb") as g:
      g.write(mutate(f.read()))
    rows.append({"file": f"shipped weights `lfd2.msgpack`, {name}",
                 "outcome": _error(lambda d=d: onc.predictors.lfd2(os.path.join(d, "lfd2.msgpack")))})
  np.savez(os.path.join(tmp, "ok.npz"), a=np.ones(3))
  with open(os.path.join(tmp, "ok.npz"), "rb") as f, open(os.path.join(tmp, "bad.npz"), "wb") as g:
    g.write(f.read()[:200])
  rows.append({"file": "an official `.npz` checkpoint, truncated",
               "outcome": _error(lambda: onc.predictors.nino(os.path.join(tmp, "bad.npz")))})
  rows.append({"file": "a weights path that does not exist",
               "outcome": _error(lambda: onc.predictors.nino(os.path.join(tmp, "missing.pt")))})
  tx = _tx()
  params = {"w": jnp.ones((3, 4))}
  state = {"params": params, "opt_state": tx.init(params)}
  path = os.path.join(tmp, "ckpt")
  onc.checkpoint.save(path, state)
  for root, _, files in os.walk(path):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(root, f)) // 3)
  rows.append({"file": "an Orbax checkpoint, every file truncated to a third",
               "outcome": _error(lambda: onc.checkpoint.restore(path, state))})
  rows.append({"file": "an Orbax checkpoint folder that does not exist",
               "outcome": _error(lambda: onc.checkpoint.restore(os.path.join(tmp, "none"), state))})
  return rows


def run_identity(tmp: str, multiprocess: bool) -> list[dict[str, Any]]:
  rows = []
  for phased in (True, False):
    a = _train(_tx("device", rollback=False), phased=phased)
    b = _train(_tx("host", rollback=False), phased=phased)
    first = next((t for t in range(STEPS) if _max_diff(a[t][0], b[t][0]) > 0), None)
    rows.append({"comparison": f"host vs device history, {STEPS} steps, "
                               + ("phased steps (`nowcast_phase`)" if phased else "one full program"),
                 "max abs difference": _max_diff(a[-1][0], b[-1][0]),
                 "first differs at step": "never" if first is None else first})
  if multiprocess:
    script = os.path.join(REPO, "examples", "multihost_train.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def two(args):
      import socket
      with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
      procs = [subprocess.Popen([sys.executable, script, "--process-id", str(i), "--num-processes", "2",
                                 "--coordinator", f"localhost:{port}", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env) for i in range(2)]
      return [p.wait(timeout=600) for p in procs]

    out = {k: os.path.join(tmp, f"{k}.npz") for k in ("a", "b", "c")}
    two(["--steps", "48", "--out", out["a"]])
    killed = two(["--steps", "48", "--ckpt", os.path.join(tmp, "mp"), "--ckpt-every", "6", "--kill-at", "23"])
    two(["--steps", "48", "--ckpt", os.path.join(tmp, "mp"), "--ckpt-every", "6", "--out", out["b"]])
    subprocess.run([sys.executable, script, "--local-devices", "4", "--steps", "48", "--out", out["c"]],
                   env=env, check=True, capture_output=True)
    a, b, c = (dict(np.load(out[k])) for k in "abc")
    rows.append({"comparison": f"2 processes killed before step 23 (exit codes {killed}) and restarted vs "
                               "uninterrupted, 48 steps (`examples/multihost_train.py`)",
                 "max abs difference": _max_diff(a, b), "first differs at step": "—"})
    rows.append({"comparison": "2 processes x 2 devices vs 1 process x 4 devices, 48 steps",
                 "max abs difference": _max_diff(a, c), "first differs at step": "—"})
  return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
  keys = list(rows[0])
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    lines.append("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                 + " |")
  return lines


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="without the multi-process runs")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    res = {"faults": run_faults(), "files": run_files(tmp), "identity": run_identity(tmp, not args.quick)}
  name = "faults_quick" if args.quick else "faults"
  lines = ["Faults tried on purpose (`python -m benchmarks.faults`): the digits MLP, Adam 3e-3, "
           "`nowcast(linefit_plus(), interval=4, ctx=3, horizon=2, rollback_factor=1.5, rollback_window=2)` "
           f"(a jump every {INTERVAL * CTX} steps), {STEPS} steps; a non-finite value injected into the "
           "gradients or the loss at one step. A non-finite gradient makes Adam's own parameters non-finite "
           "from that step on (the base optimizer's doing) unless the chain is wrapped in "
           "`optax.apply_if_finite`; what nowcasting guarantees is that no jump writes a non-finite value "
           "(jumps from windows holding one are rejected) and that a non-finite loss never poisons the "
           "rollback (inside a rollback window it counts as a loss that rose).", "", *_table(res["faults"]),
           "", "Damaged and missing files:", "", *_table(res["files"]), "",
           "What is bit-identical (the largest absolute difference of the final parameters):", "",
           *_table(res["identity"]), ""]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump(res, f, indent=1, default=str)
  with open(os.path.join(args.out, name + ".md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  return res


if __name__ == "__main__":
  main()
