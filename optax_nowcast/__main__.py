"""Command line: ``python -m optax_nowcast demo [--quick] [--steps N] [--seeds N] [--out DIR]``."""

from __future__ import annotations

import sys

COMMANDS = {"demo": "Adam vs Adam + nowcast(linefit) on sklearn digits (the README's first command)"}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    if argv and argv[0] not in ("-h", "--help"):
      print(f"optax-nowcast: unknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}.", file=sys.stderr)
    print("usage: python -m optax_nowcast COMMAND [options]\n\ncommands:")
    for name, text in COMMANDS.items():
      print(f"  {name:8s} {text}")
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  if argv[0] == "demo":
    from optax_nowcast import demo
    demo.main(argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main())
