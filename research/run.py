"""The benchmark with the research variants: ``python -m research.run --methods adam,nino++c --tasks FM-16``.

The same command line as ``python -m benchmarks.run``; results go to ``research/results`` and the product's
finished runs (``benchmarks/results``, Adam's among them) are read, not recomputed.
"""

from __future__ import annotations

import os
import sys

from benchmarks import run as bench
from research import variants

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None):
  argv = list(sys.argv[1:] if argv is None else argv)
  variants.register_all()  # idempotent: importing the module registers them too
  defaults = ["--out", os.path.join(HERE, "results"),
              "--read-runs", os.path.join(bench.REPO, "benchmarks", "results")]
  return bench.main(defaults + argv)


if __name__ == "__main__":
  main()
