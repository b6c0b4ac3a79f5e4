"""Tasks: data + model + loss + metric, kept apart from the optimizers (as in learned_optimization)."""

from optax_nowcast.tasks.digits import MLP, DigitsData, load_digits_split

__all__ = ["MLP", "DigitsData", "load_digits_split"]
