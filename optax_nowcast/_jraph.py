"""The one place that touches jraph (unmaintained): its ``GraphsTuple`` and a segment mean.

jraph 0.0.6 imports and works with the pinned JAX; if a future JAX breaks it, only this file changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

GraphsTuple = jraph.GraphsTuple


def segment_mean(data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """Mean of ``data`` rows per segment (0 for empty segments); parallel edges count separately."""
  total = jax.ops.segment_sum(data, segment_ids, num_segments, indices_are_sorted=False)
  count = jax.ops.segment_sum(jnp.ones_like(segment_ids, data.dtype), segment_ids, num_segments)
  return total / jnp.maximum(count, 1)[:, None]


__all__ = ["GraphsTuple", "segment_mean"]
