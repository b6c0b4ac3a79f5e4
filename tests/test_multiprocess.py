"""Multi-process JAX (``jax.distributed``, 2 processes x 2 CPU devices, one global mesh) with Orbax's
multi-process checkpoints: ``examples/multihost_train.py`` run as a user would run it on two hosts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                      "multihost_train.py")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(args: list[str], processes: int = 2, expect_rc: int = 0) -> list[str]:
  """Runs the example in ``processes`` processes (or one with 4 devices); returns their outputs."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if processes == 1:
    cmds = [[sys.executable, SCRIPT, "--local-devices", "4", *args]]
  else:
    port = _port()
    cmds = [[sys.executable, SCRIPT, "--process-id", str(i), "--num-processes", str(processes),
             "--coordinator", f"localhost:{port}", *args] for i in range(processes)]
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for c in cmds]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == expect_rc, out[-3000:]
  return outs


def _load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.parametrize("predictor,kill_at", [("linefit", 23), ("nino", 27)])
def test_two_processes_resume_bitwise_and_match_one_process(tmp_path, predictor, kill_at):
  """Sharded across 2 processes: a run killed mid-period and resumed from its latest checkpoint (saved every
  6 steps; the restored state is inside a period) ends bit for bit as the uninterrupted run; both end
  within float rounding of the same run in one process (4 devices: the collectives sum in another
  order)."""
  common = ["--predictor", predictor, "--steps", "48"]
  _run([*common, "--out", str(tmp_path / "uninterrupted.npz")])
  outs = _run([*common, "--ckpt", str(tmp_path / "ckpt"), "--ckpt-every", "6", "--kill-at", str(kill_at)],
              expect_rc=3)
  assert all(f"killed before step {kill_at}" in o for o in outs)
  outs = _run([*common, "--ckpt", str(tmp_path / "ckpt"), "--ckpt-every", "6",
               "--out", str(tmp_path / "resumed.npz")])
  # The latest finished checkpoint: the one before the kill, or the one before it if the kill came while
  # it was still being written (Orbax saves asynchronously; an unfinished one is discarded).
  resumed = {int(o.split("resumed at step ")[1].split()[0]) for o in outs if "resumed at step " in o}
  assert len(resumed) == 1 and resumed <= {kill_at // 6 * 6, kill_at // 6 * 6 - 6}, outs[0][-2000:]
  assert resumed.pop() % 20 != 0  # inside a period (interval 4, ctx 5: a jump every 20 steps)
  _run([*common, "--out", str(tmp_path / "one_process.npz")], processes=1)
  a, b, c = (_load(tmp_path / f) for f in ("uninterrupted.npz", "resumed.npz", "one_process.npz"))
  assert int(a["n_jumps"]) == int(b["n_jumps"]) == int(c["n_jumps"]) == 2
  assert a.keys() == b.keys() == c.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_allclose(a[k], c[k], rtol=1e-5, atol=2e-6, err_msg=k)
