r"""``nowcast(..., base=...)``: the base optimizer and ``nowcast`` in one transformation, so that a rollback
can return the base optimizer's state to the jump too.

Chained after the base (``optax.chain(base, nowcast(...))``), a rollback puts the parameters back to the
pre-jump state :math:`\theta_J`, but the base optimizer's state keeps what the bad jump fed it: SGD's
momentum after a jump that raised the loss 30x holds gradients 40-200x the size of those before it
(the generalization suite's FM-CNN8 at twice its rate), and keeps pushing the restored parameters away for
tens of steps. Owning the base, the wrapper keeps a copy of the base state :math:`\sigma_J` as it was when
the jump step began, and a rollback restores it with the parameters, so that training resumes from
:math:`(\theta_J, \sigma_J)` as if the jump had never been made:

.. math:: \sigma \leftarrow \sigma_J \ \text{(float leaves: moments, momentum)}, \qquad
   \text{integer leaves (step counts) keep counting,}

so the base's own schedules stay in step with the training loop and with ``nowcast``'s clock. The copy
costs one base state of memory (Adam: twice the parameters); it is selected in place (a fused ``where``
on whether the step jumped, and one on whether it rolled back) at every ``"full"`` step (every step
without ``nowcast_phase``), and left alone by ``"plain"`` and ``"record"`` steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_nowcast._gate import is_float

__all__ = ["NowcastWithBaseState", "with_base"]


class NowcastWithBaseState(NamedTuple):
  """State of ``nowcast(..., base=...)``: the base optimizer and ``nowcast`` as one transformation.

  >>> import jax.numpy as jnp, optax, optax_nowcast as onc
  >>> tx = onc.nowcast(onc.predictors.linefit_plus(), interval=100, rollback_factor=1.5,
  ...                  base=optax.sgd(0.1, momentum=0.9))
  >>> state = tx.init({"w": jnp.zeros(3)})
  >>> type(state).__name__, int(onc.find_nowcast_state(state).n_rollbacks)
  ('NowcastWithBaseState', 0)
  >>> state.base_at_jump[0].trace["w"].shape  # the momentum a rollback restores
  (3,)

  Attributes:
    base: the base optimizer's state.
    nowcast: the :class:`~optax_nowcast.NowcastState` (also found by ``find_nowcast_state``).
    base_at_jump: the base state as it was when the last jump step began (its float leaves are what a
      rollback restores); ``()`` without ``rollback_factor``.
  """

  base: Any
  nowcast: Any
  base_at_jump: Any


def _copy(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def with_base(base: optax.GradientTransformation, nowcaster: optax.GradientTransformationExtraArgs,
              restore: bool) -> optax.GradientTransformationExtraArgs:
  """``base`` then ``nowcaster`` (a ``nowcast``), restoring ``base``'s state on a rollback if ``restore``."""
  base = optax.with_extra_args_support(base)

  def init(params: Any) -> NowcastWithBaseState:
    base_state = base.init(params)
    return NowcastWithBaseState(base_state, nowcaster.init(params), _copy(base_state) if restore else ())

  def update(updates: Any, state: NowcastWithBaseState, params: Any = None, *,
             nowcast_phase: str | None = None, **extra_args: Any) -> tuple[Any, NowcastWithBaseState]:
    base_updates, base_state = base.update(updates, state.base, params, **extra_args)
    updates, nc = nowcaster.update(base_updates, state.nowcast, params, nowcast_phase=nowcast_phase,
                                   **extra_args)
    saved = state.base_at_jump
    if not restore or nowcast_phase in ("plain", "record"):
      # A plain step neither jumps nor rolls back; a record step makes no jump, and nowcast_phase never
      # marks a step of a rollback window "record" (the window ends before the next recording).
      return updates, NowcastWithBaseState(base_state, nc, saved)
    # Fused selects, not conditionals: XLA copies a conditional's pass-through operand, but writes a
    # select in place into the donated buffer.
    jumped = nc.n_jumps > state.nowcast.n_jumps
    saved = jax.tree.map(lambda b, s: jnp.where(jumped, b, s), state.base, saved)
    rolled = nc.n_rollbacks > state.nowcast.n_rollbacks
    base_state = jax.tree.map(lambda n, j: jnp.where(rolled, j, n) if is_float(n) else n, base_state, saved)
    return updates, NowcastWithBaseState(base_state, nc, saved)

  return optax.GradientTransformationExtraArgs(init, update)
