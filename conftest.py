"""Root pytest configuration: small notebook runs (the kernels inherit this environment)."""

import os

os.environ.setdefault("OPTAX_NOWCAST_SMALL", "1")
_nino = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "shared", "reference", "nino",
                     "weights", "nino_no_posw.npz")
if os.path.exists(_nino):  # the notebooks include NiNo when the official checkpoint is at hand
  os.environ.setdefault("OPTAX_NOWCAST_NINO_WEIGHTS", os.path.abspath(_nino))
