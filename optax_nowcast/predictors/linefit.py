r"""Training-free line fits: linefit and linefit+ (NiNo appendix A.2/A.3; Sinha 2017; WNN).

For each coordinate, fit a line :math:`a x + b` through the ``ctx`` recorded states
:math:`(x_i, w_i)` by (weighted) least squares and read it off at :math:`x = x_{ctx} + k`:

.. math::
  \min_{a,b} \sum_i \mu_i (a x_i + b - w_i)^2, \qquad \hat w = a (x_{ctx} + k) + b.

linefit uses :math:`\mu_i = 1`; linefit+ weights recent states more, :math:`\mu_i = i / ctx`.
Because the fit is linear in the states, the prediction is a fixed combination
:math:`\hat w = \sum_i c_i w_i` whose coefficients depend only on the times and ``k``; we compute ``c``
once per jump and apply it to every coordinate in one fused elementwise pass (the same result as
``jax.vmap`` of the scalar fit over coordinates, see :func:`linefit_trajectory`, at a fraction of
the memory traffic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optax_nowcast.predictors.base import Predictor, full_precision, no_state


def _weights(ctx: int, weighted: bool) -> jax.Array:
  if weighted:
    return jnp.arange(1, ctx + 1, dtype=jnp.float32) / ctx
  return jnp.ones((ctx,), jnp.float32)


def linefit_coefficients(times: jax.Array, k: jax.Array, weighted: bool = False) -> jax.Array:
  """Coefficients ``c`` (ctx,) with ``prediction = sum_i c_i * w_i`` for states at ``times``."""
  x = jnp.asarray(times, jnp.float32)
  mu = _weights(x.shape[0], weighted)
  target = x[-1] + jnp.asarray(k, jnp.float32)
  total = jnp.sum(mu)
  xbar = jnp.sum(mu * x) / total
  sxx = jnp.sum(mu * (x - xbar) ** 2)
  return mu / total + (target - xbar) * mu * (x - xbar) / sxx


def linefit_trajectory(w: jax.Array, times: jax.Array, k: jax.Array,
                       weighted: bool = False) -> jax.Array:
  """Line fit of one scalar trajectory ``w`` (ctx,), evaluated ``k`` intervals past the last state."""
  x = jnp.asarray(times, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  mu = _weights(x.shape[0], weighted)
  xbar = jnp.sum(mu * x) / jnp.sum(mu)
  wbar = jnp.sum(mu * w) / jnp.sum(mu)
  slope = jnp.sum(mu * (x - xbar) * (w - wbar)) / jnp.sum(mu * (x - xbar) ** 2)
  return wbar + slope * (x[-1] + k - xbar)


def _make(weighted: bool, name: str) -> Predictor:
  def predict(history, times, k, state):
    c = linefit_coefficients(times, k, weighted)

    def leaf(h):
      # One fused elementwise pass over the ctx states, in float32 (no float32 copy of the states).
      out = sum(c[i] * h[i].astype(jnp.float32) for i in range(h.shape[0]))
      return out.astype(h.dtype)

    return jax.tree.map(leaf, history), state

  return Predictor(init=no_state, predict=full_precision(predict), name=name, min_ctx=2, fractional_k=True)


def linefit() -> Predictor:
  """Least-squares line through the ``ctx`` states, extrapolated ``k`` intervals ahead.

  >>> import jax.numpy as jnp
  >>> p = linefit()
  >>> history = {"w": jnp.array([[1.0], [2.0], [3.0]])}  # ctx = 3 states of one coordinate
  >>> pred, _ = p.predict(history, jnp.array([1.0, 2.0, 3.0]), 2, p.init(None))
  >>> pred["w"].tolist()
  [5.0]
  """
  return _make(False, "linefit")


def linefit_plus() -> Predictor:
  """Line fit with residual weights ``[1/ctx, 2/ctx, ..., 1]`` (recent states count more)."""
  return _make(True, "linefit+")
