"""Copies the generated result tables into README.md: ``python -m benchmarks.readme``.

README.md marks each generated table with ``<!-- name -->`` ... ``<!-- /name -->``; this replaces the text
between the marks with ``benchmarks/results/<file>.md``.
"""

from __future__ import annotations

import os
import re

from benchmarks.run import REPO

TABLES = {"full-matrix": "full_matrix.md", "full-table": "full.md", "wp-table": "full_weight_prediction.md",
          "memory-table": "memory.md",
          "paired-time-table": "paired_time.md", "chunk-speed-table": "chunk_speed.md"}


def main() -> None:
  path = os.path.join(REPO, "README.md")
  with open(path) as f:
    text = f.read()
  for tag, name in TABLES.items():
    with open(os.path.join(REPO, "benchmarks", "results", name)) as f:
      table = f.read().strip()
    block = f"<!-- {tag} -->\n{table}\n<!-- /{tag} -->"
    text, n = re.subn(rf"<!-- {tag} -->.*?<!-- /{tag} -->", lambda m, block=block: block, text, flags=re.S)
    if n != 1:
      raise ValueError(f"README.md has {n} '{tag}' sections, expected 1.")
  with open(path, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
