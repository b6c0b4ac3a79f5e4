"""A multi-host training loop with nowcasting: one process per host, a global mesh, Orbax checkpoints.

Each process runs this same script. On a cluster, ``jax.distributed.initialize()`` without arguments reads
the coordinator and the process ids from the environment (SLURM, TPU pods, ...). To try it on one machine,
start two processes with two simulated CPU devices each:

    python examples/multihost_train.py --process-id 0 --num-processes 2 --coordinator localhost:12355 &
    python examples/multihost_train.py --process-id 1 --num-processes 2 --coordinator localhost:12355

What it shows:

* the parameters and the nowcast history sharded across the processes (every leaf along its first axis
  where the mesh divides it; the history keeps its parameter's layout, the ``ctx`` axis unsharded), the
  batch sharded along the same mesh axis;
* a jitted, donated step that takes the nowcast phase of the step (``onc.nowcast_phase``) as a static
  argument, so steps that neither record nor jump cost what the base optimizer's do;
* Orbax's ``CheckpointManager`` saving ``{"params", "opt_state", "step"}`` every ``--ckpt-every`` steps
  (each process writes its own shards) and resuming from the latest checkpoint at start: a run killed at
  any step and restarted ends with the parameters of an uninterrupted run, bit for bit
  (``tests/test_multiprocess.py`` checks it, and against a single-process run).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--coordinator", default=None, help="host:port of process 0 (None: one process)")
  p.add_argument("--local-devices", type=int, default=2, help="simulated CPU devices per process")
  p.add_argument("--predictor", default="linefit", choices=["linefit", "linefit_plus", "nino"])
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--ckpt", default=None, help="checkpoint folder (resumes from its latest step)")
  p.add_argument("--ckpt-every", type=int, default=10)
  p.add_argument("--kill-at", type=int, default=None, help="exit abruptly before this step (a crash)")
  p.add_argument("--out", default=None, help="process 0 writes the final parameters here (.npz)")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.local_devices}")
  import jax

  if args.coordinator is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
  import jax.numpy as jnp
  import numpy as np
  import optax
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import optax_nowcast as onc
  from optax_nowcast.tasks import MLP, load_digits_split

  mesh = Mesh(np.array(jax.devices()), ("x",))  # every device of every process
  n_dev = mesh.size
  data = load_digits_split()
  model = MLP((128, 128))

  def spec(x):  # shard a leaf along its first axis where the mesh divides it, else replicate it
    return P("x") if np.ndim(x) and np.shape(x)[0] % n_dev == 0 else P()

  # Every process builds the same initial parameters, then keeps only its shards.
  host_params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64))))
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), host_params)
  params = jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i: x[i]),
                        host_params, shardings)
  predictor = {"linefit": onc.predictors.linefit, "linefit_plus": onc.predictors.linefit_plus,
               "nino": onc.predictors.nino}[args.predictor]()
  interval, ctx = 4, 5
  tx = optax.chain(optax.adam(3e-3), onc.nowcast(predictor, interval=interval, ctx=ctx, horizon=3))
  batch_sharding = NamedSharding(mesh, P("x"))

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1), static_argnames="phase")
  def step(p, s, x, y, phase):
    g = jax.grad(loss)(p, x, y)
    u, s = tx.update(g, s, p, nowcast_phase=phase)
    return optax.apply_updates(p, u), s

  def batch(i):  # the same global batch on every process; each contributes its devices' rows
    idx = np.random.default_rng([0, i]).choice(len(data.y_train), 64, replace=False)
    x, y = data.x_train[idx].astype(np.float32), data.y_train[idx].astype(np.int32)
    return (jax.make_array_from_callback(x.shape, batch_sharding, lambda j: x[j]),
            jax.make_array_from_callback(y.shape, batch_sharding, lambda j: y[j]))

  def replicated(x):  # a process-local leaf (optax's step counts, nowcast's scalars) made a global array
    if not isinstance(x, jax.Array) or not x.is_fully_addressable or jax.process_count() == 1:
      return x
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, NamedSharding(mesh, P()), lambda i: value[i])

  # init outside jit keeps each history leaf in its parameter's layout; its scalars are process-local
  # arrays, which a multi-process checkpoint cannot save: replicate them over the mesh.
  opt_state = jax.tree.map(replicated, tx.init(params))
  start = 0
  manager = None
  if args.ckpt is not None:
    manager = ocp.CheckpointManager(os.path.abspath(args.ckpt),
                                    options=ocp.CheckpointManagerOptions(save_interval_steps=args.ckpt_every))
    latest = manager.latest_step()
    if latest is not None:  # resume: restore into the layout (shardings, memory kinds) of a fresh state
      target = {"params": params, "opt_state": opt_state}
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
      restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
      params, opt_state, start = restored["params"], restored["opt_state"], latest
      print(f"process {args.process_id}: resumed at step {start}", flush=True)
  for i in range(start, args.steps):
    if args.kill_at is not None and i == args.kill_at:
      print(f"process {args.process_id}: killed before step {i}", flush=True)
      os._exit(3)  # a crash: no cleanup, no final save
    if manager is not None:
      manager.save(i, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))
    phase = onc.nowcast_phase(i, interval=interval, ctx=ctx)
    params, opt_state = step(params, opt_state, *batch(i), phase=phase)
  if manager is not None:
    manager.wait_until_finished()
  n_jumps = int(onc.find_nowcast_state(opt_state).n_jumps)
  final = multihost_utils.process_allgather(params, tiled=True)
  if args.out is not None and jax.process_index() == 0:
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(final)[0]}
    np.savez(args.out, n_jumps=n_jumps, **flat)
  print(f"process {args.process_id}: done, {n_jumps} jumps", flush=True)


if __name__ == "__main__":
  sys.exit(main())
