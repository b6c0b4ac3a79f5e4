"""Saving and restoring a training state (parameters and optimizer state) with Orbax, with errors that name
the checkpoint.

The optimizer state of ``nowcast`` and ``farcast`` is a pytree of arrays, so Orbax's checkpointers save and
restore it directly; restoring into the layout of a fresh state (``tx.init(params)``, whose history leaves
carry their parameters' shardings and, with ``history_memory="host"``, their host memory kind) puts every
leaf back where it belongs. These two functions do that, and turn Orbax's errors about an unreadable
checkpoint (a truncated file: a bare ``JSONDecodeError``) into one that names the checkpoint.
Orbax (``pip install orbax-checkpoint``) is imported on first use.

>>> import jax.numpy as jnp, optax, optax_nowcast as onc, tempfile, os
>>> tx = optax.chain(optax.adam(1e-2), onc.nowcast(onc.predictors.linefit(), interval=2, ctx=3))
>>> params = {"w": jnp.ones(3)}
>>> state = {"params": params, "opt_state": tx.init(params)}
>>> path = os.path.join(tempfile.mkdtemp(), "step_10")
>>> save(path, state)
>>> restored = restore(path, {"params": params, "opt_state": tx.init(params)})
>>> bool((restored["params"]["w"] == 1).all())
True
"""

from __future__ import annotations

import os
from typing import Any

import jax


def save(path: str | os.PathLike, state: Any) -> None:
  """Saves ``state`` (any pytree of arrays) to the folder ``path`` with Orbax, and waits until written."""
  import orbax.checkpoint as ocp

  ck = ocp.StandardCheckpointer()
  ck.save(os.path.abspath(path), state)
  ck.wait_until_finished()


def restore(path: str | os.PathLike, target: Any) -> Any:
  """The state saved at ``path``, restored into the structure, dtypes, shardings and memory kinds of
  ``target`` (e.g. ``{"params": params, "opt_state": tx.init(params)}`` for a fresh run).

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: naming ``path``, when it cannot be read (truncated, corrupted) or does not match ``target``
      (saved with other nowcast options or another model).
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    return ocp.StandardCheckpointer().restore(path, abstract)
  except Exception as e:  # Orbax's errors about unreadable files do not name them
    raise ValueError(f"the checkpoint {path} cannot be restored into this state ({type(e).__name__}: "
                     f"{str(e)[:500]}): it is truncated or corrupted, or it was saved from a state of "
                     "another structure (other nowcast options, another model or optimizer).") from e


__all__ = ["restore", "save"]
