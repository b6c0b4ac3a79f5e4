"""Run by tests/test_sharding.py in a fresh process with 8 simulated CPU devices."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_nowcast as onc  # noqa: E402


def main(layout: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ("x",))
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32),
            "b1": jnp.zeros((32,), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(32, 8)) * 0.1, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(128, 64)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(128, 8)), jnp.float32)
  memory = "host" if layout.endswith("_host") else "device"  # history in host memory: same layout
  layout = layout.removesuffix("_host")
  if layout == "fsdp":  # every parameter sharded along its first axis; data replicated
    specs = {"w1": P("x", None), "b1": P("x"), "w2": P("x", None)}
    data_spec = P()
  else:  # data parallel: parameters replicated, the batch sharded
    specs = {k: P() for k in params}
    data_spec = P("x", None)
  shard = {k: NamedSharding(mesh, s) for k, s in specs.items()}

  def loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

  tx = optax.chain(optax.adam(1e-2), onc.nowcast(onc.predictors.linefit(), interval=3, ctx=3, horizon=2,
                                                                history_memory=memory))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s, x, y):
    u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
    return optax.apply_updates(p, u), s

  def run(p, x, y):
    s = tx.init(p)
    for _ in range(30):
      p, s = step(p, s, x, y)
    return p, s

  ref_p, ref_s = run(jax.tree.map(jnp.copy, params), x, y)  # one device
  sp = {k: jax.device_put(v, shard[k]) for k, v in params.items()}
  s0 = tx.init(sp)
  hist0 = onc.find_nowcast_state(s0).history
  for k in params:  # the history inherits the parameter's layout, ctx axis unsharded
    want = NamedSharding(mesh, P(None, *specs[k]), memory_kind="pinned_host" if memory == "host" else None)
    assert hist0[k].sharding.is_equivalent_to(want, hist0[k].ndim), (k, hist0[k].sharding)
    assert (hist0[k].sharding.memory_kind == "pinned_host") == (memory == "host"), hist0[k].sharding
  xd = jax.device_put(x, NamedSharding(mesh, data_spec))
  yd = jax.device_put(y, NamedSharding(mesh, data_spec))
  p, s = run(sp, xd, yd)
  nc = onc.find_nowcast_state(s)
  assert int(nc.n_jumps) == int(onc.find_nowcast_state(ref_s).n_jumps) == 3
  for k in params:
    # Equal up to float reduction order (sharded matmuls sum in another order; Adam amplifies it).
    np.testing.assert_allclose(np.asarray(p[k]), np.asarray(ref_p[k]), rtol=1e-4, atol=5e-5)
    h = nc.history[k]
    assert (h.sharding.memory_kind == "pinned_host") == (memory == "host"), (k, h.sharding)
    if layout == "fsdp":
      assert not h.sharding.is_fully_replicated, (k, h.sharding)
      assert not p[k].sharding.is_fully_replicated, (k, p[k].sharding)
      shard_shape = h.sharding.shard_shape(h.shape)
      assert shard_shape[1] == h.shape[1] // 8, (k, shard_shape)  # each device holds 1/8 of the history
  print("OK", layout + ("_host" if memory == "host" else ""))


if __name__ == "__main__":
  main(sys.argv[1])
