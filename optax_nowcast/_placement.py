"""Where ``nowcast`` keeps its history: on the device, or in host memory (``history_memory="host"``).

One small object answers the few questions where the two differ, so that the transformation's steps have
no ``if host`` branches: how a stored state is put away and read back, where a jump waits between its
prediction and its application, and how an optional read of the history (the rollback) is gated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def _history_sharding(p: Any) -> jax.sharding.Sharding | None:
  """The history of a ``NamedSharding``-ed parameter: the same layout, the ``ctx`` axis unsharded."""
  if not isinstance(p, jax.Array) or isinstance(p, jax.core.Tracer):
    return None  # under jit, XLA propagates the sharding of the parameters to the history
  sharding = p.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(p) - len(sharding.spec))
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *spec))
  return None


@dataclasses.dataclass(frozen=True)
class DeviceHistory:
  """The history lives next to the parameters. A jump waits in slot 0 (the window's oldest state, stale
  after the jump) until the update reads it, so a jump costs no extra parameter copy."""

  def check_backend(self) -> None:
    pass

  def zeros(self, param: Any, ctx: int, dtype: Any) -> jax.Array:
    return jnp.zeros((ctx,) + jnp.shape(param), dtype, device=_history_sharding(param))

  def put(self, x: jax.Array) -> jax.Array:
    return x

  def get(self, x: jax.Array) -> jax.Array:
    return x

  def stash(self, history: Sequence[jax.Array],
            deltas: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """``(history, carried)`` after a jump: the deltas written into slot 0; nothing carried."""
    return [jax.lax.dynamic_update_index_in_dim(h, d.astype(h.dtype), 0, 0)
            for h, d in zip(history, deltas, strict=True)], []

  def nothing_carried(self, params: Sequence[Any]) -> list[jax.Array]:
    return []

  def jump(self, history: Sequence[jax.Array], carried: Sequence[jax.Array]) -> list[jax.Array]:
    """The stashed deltas, one per float leaf."""
    return [jax.lax.index_in_dim(h, 0, 0, keepdims=False) for h in history]

  def when(self, pred: jax.Array, fn: Callable[[Any], Any], operand: Any) -> Any:
    """``fn(operand)``, where ``fn`` itself selects on ``pred`` (fused, no branch)."""
    return fn(operand)


@dataclasses.dataclass(frozen=True)
class HostHistory(DeviceHistory):
  """The history lives in host memory (``jax.memory.Space.Host``): states go there when recorded and come
  back only for a jump or a rollback; a jump is carried on the device until it is applied."""

  def check_backend(self) -> None:
    kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
    if "pinned_host" not in kinds:
      raise ValueError(f"nowcast(history_memory='host') needs a backend with host memory; "
                       f"{jax.default_backend()} has {sorted(kinds)}. Use history_memory='device'.")

  def zeros(self, param: Any, ctx: int, dtype: Any) -> jax.Array:
    return self.put(super().zeros(param, ctx, dtype))

  def put(self, x: jax.Array) -> jax.Array:
    return jax.device_put(x, jax.memory.Space.Host)

  def get(self, x: jax.Array) -> jax.Array:
    return jax.device_put(x, jax.memory.Space.Device)

  def stash(self, history, deltas):
    return list(history), list(deltas)

  def nothing_carried(self, params):
    return [jnp.zeros(jnp.shape(p), jnp.float32) for p in params]

  def jump(self, history, carried):
    return list(carried)

  def when(self, pred, fn, operand):
    """Reads the host copy only when ``pred`` holds."""
    return jax.lax.cond(pred, fn, lambda x: x, operand)


PLACEMENTS = {"device": DeviceHistory(), "host": HostHistory()}


def placement(history_memory: str) -> DeviceHistory:
  """The placement named by ``nowcast(history_memory=...)``."""
  if history_memory not in PLACEMENTS:
    raise ValueError(f"history_memory must be 'device' or 'host', got {history_memory!r}.")
  return PLACEMENTS[history_memory]
