"""Meta-training: collect parameter trajectories of real tasks and train predictors on them."""

from optax_nowcast.metatrain.collect import (
    RunSpec,
    collect,
    estimate_bytes,
    load_run,
    plan_runs,
    task_template,
    unflatten,
)
from optax_nowcast.metatrain.train import (
    TrainConfig,
    find_runs,
    load_predictor_params,
    save_predictor,
    train_lfd_on_runs,
    train_wnn,
    train_wnn_plus,
)

__all__ = [
    "RunSpec",
    "TrainConfig",
    "collect",
    "estimate_bytes",
    "find_runs",
    "load_predictor_params",
    "load_run",
    "plan_runs",
    "save_predictor",
    "task_template",
    "train_lfd_on_runs",
    "train_wnn",
    "train_wnn_plus",
    "unflatten",
]
