"""Meta-training: collect parameter trajectories of real tasks (and, next, train predictors on them)."""

from optax_nowcast.metatrain.collect import RunSpec, collect, estimate_bytes, load_run, plan_runs, unflatten

__all__ = ["RunSpec", "collect", "estimate_bytes", "load_run", "plan_runs", "unflatten"]
