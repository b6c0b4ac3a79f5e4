"""Argument checks shared by the public constructors: errors name the argument and the fix."""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, minimum: int, fix: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__}). {fix}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}. {fix}")
  return int(value)


def check_positive_or_none(name: str, value, example: str) -> None:
  if value is not None and (isinstance(value, bool) or not value > 0):
    raise ValueError(f"{name} must be a positive number (e.g. {example}) or None, got {value!r}.")
