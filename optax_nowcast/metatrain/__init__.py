"""Meta-training: collect parameter trajectories of real tasks and train predictors on them.

The whole pipeline, small (real digits runs; the shipped weights use ``python -m optax_nowcast.metatrain
pretrained``):

>>> import tempfile, jax, jax.numpy as jnp, optax, optax_nowcast as onc
>>> from optax_nowcast import metatrain
>>> out = tempfile.mkdtemp()
>>> runs = metatrain.plan_runs(seeds=[0, 1, 2], lr_scales=[1.0])
>>> metatrain.collect("digits", runs, steps=120, interval=20, out_dir=out, quiet=True)["computed"]
['s0_lr1_97d170e1', 's1_lr1_97d170e1', 's2_lr1_97d170e1']
>>> states, meta = metatrain.load_run(f"{out}/digits/s0_lr1_97d170e1")
>>> states.shape, states.dtype, meta["steps"]
((7, 26122), dtype('float16'), [0, 20, 40, 60, 80, 100, 120])
>>> cfg = metatrain.TrainConfig(horizons=3, hidden=16, steps=20, windows_per_batch=2,
...                             elements_per_window=256)
>>> res = metatrain.train_wnn_plus(metatrain.find_runs(out), cfg, out_dir=f"{out}/weights",
...                                log=lambda m: None)
>>> res["train_runs"], res["val_runs"]
(2, 1)
>>> predictor = onc.predictors.wnn_plus(f"{out}/weights/wnn_plus.msgpack")
>>> tx = optax.chain(optax.adam(1e-3), onc.nowcast(predictor, interval=20, ctx=5, horizon=3))
"""

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
from optax_nowcast.metatrain.train_nino import NiNoTrainConfig, train_nino

__all__ = [
    "NiNoTrainConfig",
    "train_nino",
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
