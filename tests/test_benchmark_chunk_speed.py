"""benchmarks/chunk_speed.py: both ways of running WNN/WNN+ give the same jump."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import chunk_speed
from optax_nowcast import predictors
from optax_nowcast.tasks import MLP


def test_time_pair_compares_the_same_prediction_both_ways():
  params = MLP((32,), 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))  # 2,410 elements
  r = chunk_speed.time_pair(params, lambda chunk: predictors.wnn_plus(chunk=chunk if chunk is None else 500),
                            repeats=2)
  assert r["whole_ms"] > 0 and r["chunked_ms"] > 0 and r["speedup"] == r["whole_ms"] / r["chunked_ms"]
  assert r["max_abs_diff"] < 1e-5
