"""The package's import graph has no cycle, counting imports inside functions too (no lazy-import
workarounds), and neither the package nor ``benchmarks/`` reaches into ``research/``."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "optax_nowcast"


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for path in (ROOT / PACKAGE).rglob("*.py"):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    mods[".".join(parts)] = path
  return mods


def _imports(path: pathlib.Path, module: str, known: set[str]) -> set[str]:
  """The package modules ``module`` imports anywhere in its file (``from a import b`` counts ``a.b`` when
  that is a module, else ``a``)."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    out |= {n for n in names if n in known and n != module}
  return out


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  found, state, stack = [], {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        found.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  return found


def test_no_import_cycle():
  graph = _graph()
  # Package __init__ files import their submodules; a submodule importing its own package's __init__ is
  # Python's normal parent-first import, not a cycle of ours.
  pruned = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}
  assert _cycles(pruned) == []


def test_cycle_finder_finds_cycles():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_modules_are_seen():
  graph = _graph()
  assert "optax_nowcast.farcast" in graph["optax_nowcast.transform"]
  assert "optax_nowcast.weights_io" in graph["optax_nowcast.predictors.nino"]
  assert "optax_nowcast.pretrained" not in graph["optax_nowcast.predictors.nino"]


def _top_level_imports(text: str) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(text)):
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module.split(".")[0])
  return names


def test_product_does_not_import_research():
  for folder in (PACKAGE, "benchmarks"):
    for path in (ROOT / folder).rglob("*.py"):
      text = path.read_text()
      assert "research" not in _top_level_imports(text), f"{path} imports research"
      assert not re.search(r"(?<![\w.-])research/", text), f"{path} refers to research/"


def test_the_core_reads_like_optax():
  """``nowcast``'s update is a short composition of named steps, both transformations share one jump gate,
  and the history's placement is one object, not branches."""
  import importlib
  import inspect

  _gate, farcast, transform = (importlib.import_module(f"optax_nowcast.{m}")
                               for m in ("_gate", "farcast", "transform"))

  update = inspect.getsource(transform._update)
  assert len(update.splitlines()) < 80
  for step in ("_record(", "_jump(", "_rollback_check(", "_roll_back(", "_plain("):
    assert step in update
  assert "host" not in update
  assert farcast.jump_gate is _gate.jump_gate and transform.jump_gate is _gate.jump_gate
  assert "jump_gate(" in inspect.getsource(farcast.farcast)
