"""When to jump (period schedules) and how far (horizon schedules).

Units: a *step* ``s`` is the number of updates already made, i.e. ``state.count`` of the update call
that receives the parameters reached after ``s`` steps. A jump at step ``J`` is made by the update call
that receives those parameters: it replaces that call's base update by ``prediction - params``. A
*horizon* ``k`` is measured in *intervals* (the spacing of the recorded states), as in WNN and NiNo.

Period schedules give, for any step ``s``, the first scheduled jump step ``J >= s`` and its 0-based
index ``j``; they are evaluated inside ``jax.jit`` on traced integers without host round-trips.
Horizon schedules map the jump index ``j`` to ``k``.

Example:

  >>> from optax_nowcast import schedules
  >>> schedules.constant_period(1000).jump_steps(4000).tolist()
  [1000, 2000, 3000, 4000]
  >>> schedules.k_decay(max_k=40, n_jumps=10).table().tolist()
  [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from optax_nowcast._checks import check_int

__all__ = [
    "PeriodSchedule",
    "ConstantPeriod",
    "DynamicPeriod",
    "HorizonSchedule",
    "ConstantHorizon",
    "KDecay",
    "constant_period",
    "dynamic_period",
    "constant_horizon",
    "k_decay",
    "resolve_period",
    "resolve_horizon",
]




class PeriodSchedule(abc.ABC):
  """Base class of the jump schedules.

  Subclasses implement :meth:`next_jump` (traced) and :meth:`jump_steps` (host).
  """

  @abc.abstractmethod
  def next_jump(self, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First jump step ``J >= step`` and its 0-based index ``j`` (int32 scalars, traceable)."""

  @abc.abstractmethod
  def jump_steps(self, total_steps: int) -> np.ndarray:
    """All jump steps ``J <= total_steps`` (host-side ``np.ndarray`` of ints)."""

  @abc.abstractmethod
  def min_gap(self) -> int:
    """Smallest distance between two jumps, the first jump counted from step 0."""

  def next_jump_host(self, step: int) -> int:
    """:meth:`next_jump`'s ``J`` on the host, for a Python ``int`` step (used by
    :func:`optax_nowcast.nowcast_phase` every step, so the built-in schedules answer in pure Python)."""
    return int(self.next_jump(step)[0])


@dataclasses.dataclass(frozen=True)
class ConstantPeriod(PeriodSchedule):
  """Jumps at steps ``period, 2 * period, 3 * period, ...`` (WNN, NiNo)."""

  period: int

  def __post_init__(self):
    check_int("period", self.period, 1, "Pass the number of optimizer steps between two jumps.")

  def next_jump(self, step):
    step = jnp.asarray(step, jnp.int32)
    j = jnp.maximum(step - 1, 0) // self.period
    return ((j + 1) * self.period).astype(jnp.int32), j.astype(jnp.int32)

  def jump_steps(self, total_steps):
    return np.arange(self.period, total_steps + 1, self.period, dtype=np.int64)

  def next_jump_host(self, step):
    return (max(step - 1, 0) // self.period + 1) * self.period

  def min_gap(self):
    return self.period


@dataclasses.dataclass(frozen=True)
class DynamicPeriod(PeriodSchedule):
  r"""A period that grows during training (NiNo++): nowcast often early, rarely late.

  The NiNo++ paper refers to a formula that is missing from its text; this is ours. The jumps are

  .. math::
    J_0 = p(0), \qquad J_{j+1} = J_j + p(J_j), \qquad
    p(s) = \mathrm{round}\Big(p_{\min} + (p_{\max} - p_{\min})
           \min\big(1, s / T\big)^{\gamma}\Big),

  so the period rises from ``min_period`` at the start to ``max_period`` at ``total_steps`` (``T``)
  and stays there afterwards. ``power`` (``gamma``) < 1 lengthens the period quickly, > 1 keeps
  jumps frequent for longer. The jump table up to ``total_steps`` is built once on the host.

  Example (``min_period=1000, max_period=3000, total_steps=10_000``): jumps at 1000, 2200, 3640, 5368,
  7442, 9930, 12916, 15916, ...
  """

  min_period: int
  max_period: int
  total_steps: int
  power: float = 1.0

  def __post_init__(self):
    check_int("min_period", self.min_period, 1, "Pass the first (shortest) period in steps.")
    check_int("max_period", self.max_period, self.min_period,
              "max_period is the longest period; it must not be below min_period.")
    check_int("total_steps", self.total_steps, 1, "Pass the planned length of training in steps.")
    if not (isinstance(self.power, (int, float)) and math.isfinite(self.power) and self.power > 0):
      raise ValueError(f"power must be a positive finite number, got {self.power!r}.")
    object.__setattr__(self, "_table", self._build_table())
    object.__setattr__(self, "_host_table", [int(j) for j in self._table])

  def period_at(self, step: float) -> int:
    frac = min(1.0, max(0.0, step / self.total_steps)) ** self.power
    return int(round(self.min_period + (self.max_period - self.min_period) * frac))

  def _build_table(self) -> np.ndarray:
    steps = [self.period_at(0)]
    while steps[-1] < self.total_steps:
      steps.append(steps[-1] + self.period_at(steps[-1]))
    return np.asarray(steps, np.int64)

  def next_jump(self, step):
    table = jnp.asarray(self._table, jnp.int32)
    step = jnp.asarray(step, jnp.int32)
    n = table.shape[0]
    idx = jnp.searchsorted(table, step, side="left").astype(jnp.int32)
    last = table[-1]
    # Past the table the period is max_period.
    extra = (jnp.maximum(step - last, 0) + self.max_period - 1) // self.max_period
    beyond = idx >= n
    jump = jnp.where(beyond, last + extra * self.max_period, table[jnp.minimum(idx, n - 1)])
    index = jnp.where(beyond, n - 1 + extra, idx)
    return jump.astype(jnp.int32), index.astype(jnp.int32)

  def jump_steps(self, total_steps):
    out = list(self._table[self._table <= total_steps])
    nxt = int(self._table[-1]) + self.max_period
    while nxt <= total_steps:
      out.append(nxt)
      nxt += self.max_period
    return np.asarray(out, np.int64)

  def min_gap(self):
    return int(np.min(np.diff(self._table, prepend=0))) if len(self._table) else self.min_period

  def next_jump_host(self, step):
    idx = bisect.bisect_left(self._host_table, step)
    if idx < len(self._host_table):
      return self._host_table[idx]
    last = self._host_table[-1]
    return last + -(-max(step - last, 0) // self.max_period) * self.max_period


class HorizonSchedule(abc.ABC):
  """Maps the 0-based jump index ``j`` to a horizon ``k`` (in intervals)."""

  @abc.abstractmethod
  def __call__(self, jump_index: jax.Array) -> jax.Array:
    """Horizon ``k`` (int32 scalar, traceable) at jump ``jump_index``."""

  def resolve(self, period: PeriodSchedule) -> HorizonSchedule:
    """Returns a schedule with anything that depends on the jump schedule filled in."""
    return self

  @abc.abstractmethod
  def max_horizon(self) -> int:
    """The largest ``k`` the schedule gives: a static bound (``nowcast(learning_rate=...)`` sums the rate
    over that many intervals ahead of a jump)."""


@dataclasses.dataclass(frozen=True)
class ConstantHorizon(HorizonSchedule):
  """The same horizon ``k`` at every jump."""

  k: int

  def __post_init__(self):
    check_int("horizon", self.k, 0,
               "The horizon is how many intervals ahead to predict; use a non-negative int.")

  def __call__(self, jump_index):
    return jnp.full((), self.k, jnp.int32)

  def max_horizon(self) -> int:
    return self.k


@dataclasses.dataclass(frozen=True)
class KDecay(HorizonSchedule):
  r"""NiNo's k-decay: far jumps early, near jumps late.

  .. math:: k_j = \mathrm{round}\big(\mathrm{linspace}(K^{1/p}, 1, n)[j]^{\,p}\big),

  with ``K = max_k`` and ``n = n_jumps``; jumps past the ``n``-th use ``k = 1``. If ``n_jumps`` is not
  given it is the number of jumps the period schedule makes up to ``total_steps`` (for a constant
  period, ``total_steps // period``, as in NiNo).
  """

  max_k: int
  n_jumps: int | None = None
  total_steps: int | None = None
  p: float = 2.0

  def __post_init__(self):
    check_int("max_k", self.max_k, 1, "max_k is the first (largest) horizon in intervals.")
    if self.n_jumps is None and self.total_steps is None:
      raise ValueError("k_decay needs n_jumps or total_steps to know how many jumps to spread the "
                       "horizons over: pass k_decay(max_k, total_steps=<training steps>).")
    if self.n_jumps is not None:
      check_int("n_jumps", self.n_jumps, 1, "Pass the number of jumps in training.")
    if self.total_steps is not None:
      check_int("total_steps", self.total_steps, 1, "Pass the planned training length in steps.")
    if not (isinstance(self.p, (int, float)) and self.p > 0):
      raise ValueError(f"p must be a positive number, got {self.p!r}.")

  def resolve(self, period):
    if self.n_jumps is not None:
      return self
    n = len(period.jump_steps(self.total_steps))
    if n < 1:
      raise ValueError(f"k_decay(total_steps={self.total_steps}) allows no jump with this period "
                       f"schedule (first jump after step {self.total_steps}); raise total_steps.")
    return dataclasses.replace(self, n_jumps=n)

  def max_horizon(self) -> int:
    return self.max_k

  def table(self) -> np.ndarray:
    if self.n_jumps is None:
      raise ValueError("This k_decay is not resolved yet: pass n_jumps, or use it inside nowcast().")
    ks = np.linspace(self.max_k ** (1.0 / self.p), 1.0, self.n_jumps) ** self.p
    return np.maximum(np.round(ks), 1).astype(np.int32)

  def __call__(self, jump_index):
    table = jnp.asarray(self.table())
    j = jnp.asarray(jump_index, jnp.int32)
    return jnp.where(j < table.shape[0], table[jnp.clip(j, 0, table.shape[0] - 1)], 1).astype(jnp.int32)


def constant_period(period: int) -> ConstantPeriod:
  """A jump every ``period`` steps.

  >>> constant_period(500).jump_steps(1600).tolist()
  [500, 1000, 1500]
  """
  return ConstantPeriod(period)


def dynamic_period(min_period: int, max_period: int, total_steps: int,
                   power: float = 1.0) -> DynamicPeriod:
  """NiNo++'s growing period; see :class:`DynamicPeriod` for the formula.

  >>> dynamic_period(200, 1000, total_steps=4000).jump_steps(4000).tolist()[:4]
  [200, 440, 728, 1074]
  """
  return DynamicPeriod(min_period, max_period, total_steps, power)


def constant_horizon(k: int) -> ConstantHorizon:
  """Predict ``k`` intervals ahead at every jump.

  >>> int(constant_horizon(5)(3))
  5
  """
  return ConstantHorizon(k)


def k_decay(max_k: int, *, n_jumps: int | None = None, total_steps: int | None = None,
            p: float = 2.0) -> KDecay:
  """NiNo's decaying horizon; see :class:`KDecay` for the formula.

  >>> k_decay(40, n_jumps=4).table().tolist()
  [40, 21, 8, 1]
  """
  return KDecay(max_k, n_jumps, total_steps, p)


def for_run(total_steps: int, *, ctx: int = 5, intervals_per_run: int = 50, max_k: int = 40) -> dict:
  r"""``nowcast``'s ``interval``, ``ctx`` and ``horizon`` for a run of ``total_steps`` steps, with NiNo's
  geometry scaled to the run's length.

  NiNo (Knyazev 2025) records a state every 200 steps of a 10,000-step run, jumps every ``ctx = 5`` of
  them and predicts ``k`` intervals ahead with ``k`` decaying from 40 (:func:`k_decay`). Measured in the
  run's own length ``T`` that is

  .. math:: \Delta = T / 50, \qquad \text{a jump every } 5\Delta = T/10, \qquad
            k_0 \Delta = 40 \Delta = 0.8\, T,

  so ten jumps (the last one at the run's end is not made) whose first horizon reaches 0.8 of the run
  ahead. A fixed ``interval`` does not scale: 100 steps in a 2,000-step run give three jumps, the first
  predicting 4,000 steps (twice the run) ahead. ``for_run`` keeps the ratios: ``interval =
  total_steps // intervals_per_run``, ``horizon = k_decay(max_k, total_steps=total_steps)``. With a
  decaying learning-rate schedule, also pass it as ``nowcast(..., learning_rate=schedule)``.

  Args:
    total_steps: the planned length of training in optimizer steps (at least ``intervals_per_run``).
    ctx: states per jump (NiNo: 5).
    intervals_per_run: recorded intervals in the run (NiNo: 50).
    max_k: the first jump's horizon in intervals (NiNo: 40).

  Returns:
    ``{"interval", "ctx", "horizon"}``, to pass on as ``nowcast(predictor, **for_run(total_steps))``.

  >>> s = for_run(10_000)
  >>> s["interval"], s["ctx"], s["horizon"].max_k
  (200, 5, 40)
  >>> for_run(2_000)["interval"]
  40
  """
  check_int("intervals_per_run", intervals_per_run, 1, "Pass how many recording intervals a run holds "
            "(NiNo: 50).")
  check_int("total_steps", total_steps, intervals_per_run,
            f"Pass the planned length of training in steps, at least intervals_per_run={intervals_per_run} "
            "(one step per interval).")
  check_int("ctx", ctx, 1, "Pass the number of states each jump reads (NiNo: 5).")
  check_int("max_k", max_k, 1, "max_k is the first (largest) horizon in intervals (NiNo: 40).")
  if ctx > intervals_per_run:
    raise ValueError(f"ctx={ctx} states do not fit in intervals_per_run={intervals_per_run} intervals: no "
                     "jump would be made. Lower ctx or raise intervals_per_run.")
  return {"interval": total_steps // intervals_per_run, "ctx": ctx,
          "horizon": k_decay(max_k, total_steps=total_steps)}


def resolve_period(period: int | PeriodSchedule | None, ctx: int, interval: int) -> PeriodSchedule:
  """The period schedule of ``nowcast(period=...)``: ``None`` is every ``ctx * interval`` steps, an int a
  constant period; every gap must leave room for ``ctx`` recordings ``interval`` steps apart.

  >>> resolve_period(None, ctx=5, interval=200)
  ConstantPeriod(period=1000)
  """
  window = ctx * interval
  if period is None:
    period = ConstantPeriod(window)
  elif isinstance(period, (int, np.integer)) and not isinstance(period, bool):
    period = ConstantPeriod(int(period))
  elif not isinstance(period, PeriodSchedule):
    raise ValueError(f"period must be None, an int or a schedules.PeriodSchedule (e.g. "
                     f"schedules.dynamic_period(...)), got {period!r}.")
  if period.min_gap() < window:
    raise ValueError(
        f"period: jumps {period.min_gap()} steps apart are shorter than ctx * interval = {ctx} * "
        f"{interval} = {window}; each jump needs ctx fresh states recorded every interval steps. "
        f"Use a period of at least {window} steps, or lower ctx or interval.")
  return period


def resolve_horizon(horizon: int | HorizonSchedule | None, default: int,
                    period: PeriodSchedule) -> HorizonSchedule:
  """The horizon schedule of ``nowcast(horizon=...)`` and ``farcast``: ``None`` is ``default`` intervals,
  an int a constant horizon, a schedule is bound to the jumps of ``period`` (``k_decay`` needs their number).

  >>> resolve_horizon(None, 5, constant_period(1000))
  ConstantHorizon(k=5)
  >>> resolve_horizon(k_decay(40, total_steps=10_000), 5, constant_period(1000)).table().tolist()[:3]
  [40, 33, 26]
  """
  if horizon is None:
    horizon = ConstantHorizon(default)
  elif isinstance(horizon, (int, np.integer)) and not isinstance(horizon, bool):
    if horizon < 0:
      raise ValueError(f"horizon must be >= 0 intervals, got {horizon}: the predictor extrapolates "
                       "forward in time. Pass a non-negative int or a schedules.HorizonSchedule.")
    horizon = ConstantHorizon(int(horizon))
  elif not isinstance(horizon, HorizonSchedule):
    raise ValueError(f"horizon must be None, an int (intervals) or a schedules.HorizonSchedule "
                     f"(e.g. schedules.k_decay(40, total_steps=...)), got {horizon!r}.")
  return horizon.resolve(period)
