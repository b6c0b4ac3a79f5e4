"""optax_nowcast: nowcasting of neural-network parameters as a composable optax transformation.

>>> import optax, optax_nowcast as onc
>>> tx = optax.chain(optax.adam(1e-3), onc.nowcast(onc.predictors.linefit(), interval=20))
"""

from optax_nowcast import checkpoint, graph_trace, graphs, predictors, schedules, weight_prediction
from optax_nowcast._with_base import NowcastWithBaseState
from optax_nowcast.farcast import FarcastState, farcast
from optax_nowcast.predictors import Predictor
from optax_nowcast.transform import NowcastState, find_nowcast_state, nowcast, nowcast_phase

__version__ = "0.1.0"

__all__ = [
    "FarcastState",
    "NowcastState",
    "NowcastWithBaseState",
    "Predictor",
    "__version__",
    "checkpoint",
    "farcast",
    "find_nowcast_state",
    "graph_trace",
    "graphs",
    "nowcast",
    "nowcast_phase",
    "predictors",
    "schedules",
    "weight_prediction",
]
