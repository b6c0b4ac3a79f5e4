"""Sphinx configuration of the optax_nowcast documentation (``sphinx-build -W docs docs/_build/html``)."""

from __future__ import annotations

import os
import shutil
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
sys.path.insert(0, REPO)

import optax_nowcast  # noqa: E402
from benchmarks import docs as results_pages  # noqa: E402

project = "optax_nowcast"
author = "optax_nowcast developers"
copyright = "2026, optax_nowcast developers"  # noqa: A001
release = optax_nowcast.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks run in the test command (nbmake); here they are rendered
suppress_warnings = ["myst.header"]

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
templates_path = ["_templates"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple fields: documented once, by autodoc
add_module_names = False
nitpicky = False

doctest_global_setup = "import jax, jax.numpy as jnp, optax, optax_nowcast as onc"
doctest_test_doctest_blocks = ""  # docstrings: run by pytest (--doctest-modules); here, the pages

html_theme = "sphinx_book_theme"
html_title = "optax_nowcast"
html_static_path = ["_static"]
html_theme_options = {"show_toc_level": 2, "repository_url": "https://github.com/optax-nowcast/optax_nowcast",
                      "use_repository_button": False}


def _generate(app) -> None:
  """The notebooks (rendered from ``notebooks/``) and the results pages (from ``benchmarks/results``)."""
  nb_dir = os.path.join(DOCS, "notebooks")
  os.makedirs(nb_dir, exist_ok=True)
  for name in sorted(os.listdir(os.path.join(REPO, "notebooks"))):
    if name.endswith(".ipynb"):
      shutil.copy(os.path.join(REPO, "notebooks", name), os.path.join(nb_dir, name))
  results_pages.write_pages(os.path.join(DOCS, "results"))
  shutil.copy(results_pages.FIGURE, os.path.join(DOCS, "_static", os.path.basename(results_pages.FIGURE)))


def setup(app):
  app.connect("builder-inited", _generate)
