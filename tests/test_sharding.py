"""Nowcasting under jax.sharding on 8 simulated CPU devices (run in a fresh process: XLA_FLAGS)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "sharded_nowcast.py")


@pytest.mark.parametrize("layout", ["data_parallel", "fsdp", "fsdp_host"])
def test_sharded_run_equals_unsharded_and_keeps_layout(layout):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, SCRIPT, layout], capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert f"OK {layout}" in out.stdout
