"""The generated documentation pages and README's generated block (``benchmarks/docs.py``), and the
product's method registry (``benchmarks/run.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks import docs, run


def test_results_pages_hold_the_benchmarks_own_tables(tmp_path):
  pages = docs.write_pages(str(tmp_path))
  assert {os.path.basename(p) for p in pages} == {"index.md", *(f"{n}.md" for n in docs.PAGES)}
  with open(tmp_path / "steps_to_target.md") as f:
    page = f.read()
  with open(os.path.join(docs.RESULTS, "full_matrix.md")) as f:
    assert f.read().strip() in page  # copied, not retyped
  assert "![full_FM-16.png](full_FM-16.png)" in page and (tmp_path / "full_FM-16.png").exists()
  with open(tmp_path / "index.md") as f:
    index = f.read()
  assert "| task | linefit+ | wnn+ | nino-ours | nino |" in index and "```{toctree}" in index


def test_readme_headline_is_the_generated_one():
  """README's results block is ``python -m benchmarks.docs``'s output: regenerate it, never edit it."""
  with open(os.path.join(run.REPO, "README.md")) as f:
    readme = f.read()
  assert f"<!-- headline -->\n{docs.headline_table()}\n<!-- /headline -->" in readme
  assert f"<!-- cost -->\n{docs.cost_summary()}\n<!-- /cost -->" in readme
  assert f"<!-- for_run -->\n{docs.for_run_summary()}\n<!-- /for_run -->" in readme
  assert len(readme.encode()) < 12_000


def test_headline_reads_the_medians_of_full_json():
  table = docs.headline_matrix()
  row = next(line for line in table.splitlines() if line.startswith("| FM-16 |"))
  import json
  with open(os.path.join(docs.RESULTS, "full.json")) as f:
    med = json.load(f)["summary"]["FM-16"]["methods"]["nino"]["median"]["reduction_pct"]
  assert row.split("|")[-2].strip() == f"{med:.1f}"


def test_for_run_summary_counts_the_suites_own_rows():
  """README's general-suite block: one overall row per method shown, read from ``general_summary.json``."""
  import json
  text = docs.for_run_summary(("nino-ours", "linefit+"), tuned=())
  rows = [line for line in text.splitlines() if line.startswith(("| nino-ours |", "| linefit+ |"))]
  assert [r.split("|")[1].strip() for r in rows] == ["nino-ours", "linefit+"]
  with open(os.path.join(docs.RESULTS, "general_summary.json")) as f:
    n = sum(r["method"] == "nino-ours" and not run.is_variant(r["config"]) for r in json.load(f)["rows"])
  assert rows[0].split("|")[2].strip() == str(n)


def test_help_lists_only_product_methods():
  out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--help"], capture_output=True, text=True,
                       check=True, cwd=run.REPO).stdout
  assert "nino-ours" in out and "wp2" in out
  for variant in ("nino++", "wnn+noc10", "wnn+k20", "nino-recipe"):
    assert variant not in out


def test_methods_are_grouped_by_family_and_names_are_never_reused():
  assert run.METHODS["adam"].family == "base"
  assert run.METHODS["wp2"].family == "weight prediction" and run.METHODS["wp2"].grad_at_predicted == 2
  assert run.METHODS["nino-ours+wp2"].weights is run.METHODS["nino-ours"].weights
  with pytest.raises(ValueError, match="already registered"):
    run.register("adam", run.METHODS["adam"])


def test_official_checkpoint_comes_from_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv("OPTAX_NOWCAST_NINO_WEIGHTS", raising=False)
  monkeypatch.delenv("OPTAX_NOWCAST_OFFICIAL_DIR", raising=False)
  assert run.official_weights("nino_mlp") is None
  with pytest.raises(ValueError, match="OPTAX_NOWCAST_OFFICIAL_DIR"):
    run.METHODS["wnn+official"].build(None, run.FULL)
  (tmp_path / "nino_mlp.npz").write_bytes(b"")
  monkeypatch.setenv("OPTAX_NOWCAST_OFFICIAL_DIR", str(tmp_path))
  assert run.official_weights("nino_mlp") == str(tmp_path / "nino_mlp.npz")


def test_committed_runs_are_found_under_their_fingerprints():
  """The committed ``full`` runs still match the product methods' fingerprints (a registry change that
  altered them would silently orphan every committed run), from one root or several."""
  found = run._finished_runs("full", 3, run.FULL, os.path.join(docs.RESULTS))
  assert {"adam", "linefit+", "nino-ours", "wnn+", "lfd2", "wp2"} <= set(found["FM-16"])
  assert run._finished_runs("full", 3, run.FULL, [docs.RESULTS, "/nonexistent"]).keys() == found.keys()
