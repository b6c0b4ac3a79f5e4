r"""AdamW weight prediction: gradients at the weights Adam is about to reach (Guan, 2023).

From the bias-corrected moments of Adam/AdamW after ``t`` updates,
:math:`\hat m_t = m_t / (1 - \beta_1^t)`, :math:`\hat v_t = v_t / (1 - \beta_2^t)`, the weights ``s``
steps ahead are predicted as

.. math:: \hat\theta_{t+s} = \theta_t - s\,\eta_t\Big(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
          + \lambda\,\theta_t\Big),

with the weight-decay term :math:`\lambda\theta_t` off by default (the author's code has none). At
``t = 0`` the parameters are returned unchanged. The gradient is then computed at
:math:`\hat\theta` and the ordinary AdamW step is applied to :math:`\theta_t` with it:

  >>> import jax, jax.numpy as jnp, optax
  >>> from optax_nowcast import weight_prediction
  >>> tx = optax.adamw(1e-2)
  >>> params = {"w": jnp.array([1.0, -2.0])}
  >>> opt_state = tx.init(params)
  >>> loss_fn = lambda p, x: jnp.sum((p["w"] - x) ** 2)
  >>> step_fn = weight_prediction.value_and_grad_at_predicted(loss_fn, steps=2, learning_rate=1e-2)
  >>> @jax.jit
  ... def train_step(params, opt_state, x):
  ...   loss, grads = step_fn(params, opt_state, x)
  ...   updates, opt_state = tx.update(grads, opt_state, params)
  ...   return optax.apply_updates(params, updates), opt_state, loss
  >>> for _ in range(3):
  ...   params, opt_state, loss = train_step(params, opt_state, jnp.zeros(2))
  >>> bool(loss < 5.0)
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

__all__ = ["find_adam_state", "predict", "value_and_grad_at_predicted"]

_HYPER_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _is_state(x) -> bool:
  return isinstance(x, (optax.ScaleByAdamState, *_HYPER_STATES))


def find_adam_state(opt_state: Any) -> tuple[optax.ScaleByAdamState, dict[str, Any]]:
  """Finds Adam's moments anywhere in an optimizer state, and any injected hyperparameters.

  Returns the ``optax.ScaleByAdamState`` and the ``hyperparams`` dict of the innermost
  ``optax.inject_hyperparams`` state around it (empty if there is none).
  """
  found: list[tuple[optax.ScaleByAdamState, dict[str, Any]]] = []

  def visit(node, hyper):
    if isinstance(node, optax.ScaleByAdamState):
      found.append((node, hyper))
      return
    if isinstance(node, _HYPER_STATES):
      visit(node.inner_state, {**hyper, **node.hyperparams})
      return
    children = jax.tree.leaves(node, is_leaf=lambda x: x is not node and _is_state(x))
    for child in children:
      if _is_state(child):
        visit(child, hyper)

  visit(opt_state, {})
  if not found:
    raise ValueError(
        "weight prediction needs Adam's moments, but opt_state holds no optax.ScaleByAdamState. "
        "Use it with optax.adam, optax.adamw (possibly in a chain or inject_hyperparams).")
  if len(found) > 1:
    raise ValueError(f"opt_state holds {len(found)} Adam states; pass the one to use, e.g. "
                     f"opt_state[0].")
  return found[0]


def _hyper(name, value, hyper, default=None, required=False):
  if value is not None:
    return value
  if name in hyper:
    return hyper[name]
  if required:
    raise ValueError(f"{name} is not in the optimizer state (it is only there with "
                     f"optax.inject_hyperparams): pass {name}=... to weight prediction, the value "
                     f"given to the optimizer.")
  return default


def predict(params: optax.Params, opt_state: Any, steps: int | jax.Array, *,
            learning_rate: float | optax.Schedule | None = None, b1: float | None = None,
            b2: float | None = None, eps: float | None = None,
            weight_decay: float | None = None) -> optax.Params:
  """Predicts the parameters ``steps`` Adam(W) updates ahead (see the module docstring).

  Hyperparameters left ``None`` are read from an ``optax.inject_hyperparams`` state when there is
  one; otherwise ``b1=0.9, b2=0.999, eps=1e-8, weight_decay=0`` and ``learning_rate`` is required.
  A schedule ``learning_rate`` is evaluated at Adam's step count. Dtypes of ``params`` are kept.
  """
  adam, hyper = find_adam_state(opt_state)
  lr = _hyper("learning_rate", learning_rate, hyper, required=True)
  b1 = _hyper("b1", b1, hyper, 0.9)
  b2 = _hyper("b2", b2, hyper, 0.999)
  eps = _hyper("eps", eps, hyper, 1e-8)
  wd = _hyper("weight_decay", weight_decay, {}, 0.0)  # opt-in only: the paper's code has none
  count = adam.count
  if callable(lr):
    lr = lr(count)
  chex.assert_trees_all_equal_structs(adam.mu, params)
  t = jnp.asarray(count, jnp.float32)
  c1 = 1.0 - jnp.asarray(b1, jnp.float32) ** t
  c2 = 1.0 - jnp.asarray(b2, jnp.float32) ** t
  scale = jnp.where(count > 0, jnp.asarray(steps, jnp.float32) * lr, 0.0)
  c1, c2 = jnp.where(count > 0, c1, 1.0), jnp.where(count > 0, c2, 1.0)

  def leaf(p, m, v):
    p32 = jnp.asarray(p, jnp.float32)
    direction = (m / c1) / (jnp.sqrt(v / c2) + eps) + wd * p32
    return (p32 - scale * direction).astype(jnp.result_type(p))

  return jax.tree.map(leaf, params, adam.mu, adam.nu)


def value_and_grad_at_predicted(loss_fn: Callable[..., jax.Array], steps: int, *,
                                has_aux: bool = False, **hyperparams
                                ) -> Callable[..., tuple[Any, optax.Updates]]:
  """Wraps ``loss_fn(params, *args)`` to return its value and gradient at the predicted weights.

  ``value_and_grad_at_predicted(loss_fn, steps)(params, opt_state, *args)`` returns
  ``(loss, grads)`` evaluated at ``predict(params, opt_state, steps)``; apply the grads to
  ``params`` with the ordinary optimizer update. ``hyperparams`` are passed to :func:`predict`.
  """
  vg = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def wrapped(params, opt_state, *args, **kwargs):
    return vg(predict(params, opt_state, steps, **hyperparams), *args, **kwargs)

  return wrapped
