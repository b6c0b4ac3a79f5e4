"""Nowcasting predictors: each returns a :class:`Predictor` to pass to :func:`optax_nowcast.nowcast`."""

from optax_nowcast.predictors import lfd
from optax_nowcast.predictors.base import (
    History,
    Predictor,
    PredictorState,
    full_precision,
    no_state,
    per_coordinate,
)
from optax_nowcast.predictors.lfd import lfd2
from optax_nowcast.predictors.linefit import (
    linefit,
    linefit_coefficients,
    linefit_plus,
    linefit_trajectory,
)
from optax_nowcast.predictors.nino import NiNoGNN, load_official_weights, nino
from optax_nowcast.predictors.wnn import WNN, WNNPlus, wnn, wnn_plus

__all__ = [
    "History",
    "NiNoGNN",
    "WNN",
    "WNNPlus",
    "Predictor",
    "PredictorState",
    "full_precision",
    "lfd",
    "lfd2",
    "linefit",
    "linefit_coefficients",
    "linefit_plus",
    "linefit_trajectory",
    "load_official_weights",
    "nino",
    "no_state",
    "per_coordinate",
    "wnn",
    "wnn_plus",
]
