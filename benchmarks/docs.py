"""The results pages of the documentation and README's headline table, generated from ``benchmarks/results``.

    python -m benchmarks.docs    # README's headline figure and table (the docs build writes docs/results)

Nothing here is typed by hand: every table is a file the benchmarks wrote (``benchmarks/results/*.md``), and
the headline table is computed from ``full.json``. The docs build (``docs/conf.py``) calls
:func:`write_pages`.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from benchmarks.run import (
  ALL_TASKS,
  FULL,
  GENERAL,
  RATE_CHECK,
  REPO,
  _finished_runs,
  _overall_lines,
  format_matrix,
  is_variant,
  plot_task,
  settings_for,
  tuned_rows,
)
from optax_nowcast.schedules import for_run

RESULTS = os.path.join(REPO, "benchmarks", "results")
# The README's headline: the safe default, our two learned predictors, and the authors' NiNo checkpoint.
HEADLINE = ("linefit+", "wnn+", "nino-ours", "nino")

# page -> (title, introduction, [result files: tables (.md) and figures (.png)], the command)
PAGES = {
    "steps_to_target": (
        "Steps to target on NiNo's tasks",
        "Every method of a seed sees the same minibatches; validation every 50 steps on a fixed subset, the "
        "whole split at the end. The target is Adam's own final smoothed validation value per seed (and, "
        "for vision, the NiNo paper's fixed target); reduction = 1 - steps / Adam's steps. nowcast: "
        "interval 200, ctx 5 (a jump every 1,000 steps), k = 5 for the line fits, k-decay from 40 for the "
        "learned predictors. Held-out tasks (`*`) are in no predictor's training data. Time columns come "
        "from runs made hours apart on a shared machine: compare times only on the paired-time page.",
        ["full_matrix.md", "full.md", "full_FM-16.png", "full_C10-16.png", "full_FM-32.png",
         "full_C10-32.png", "full_LM-3-24.png", "full_LM-2-32.png", "full_LM-3-64.png", "full_digits.png"],
        "python -m benchmarks.run --tasks FM-16 --methods adam,linefit+,nino-ours --seeds 3"),
    "general": (
        "Generalization: held-out configurations",
        "Models, optimizers and learning-rate schedules no predictor was trained on "
        "(`optax_nowcast.tasks.GENERAL_TASKS`), 3 seeds each (5 where 3 leave the answer within the "
        "noise, and on every constant-rate configuration: `benchmarks.run.TASK_SEEDS`; a method measured "
        "before that keeps its 3, as the seeds column says); the decaying schedules also at 40-85 % of "
        "their length (where swept); wall time paired with the base's in one process "
        "(`benchmarks.paired_time --suite general`); the base's own learning rate checked at 0.5x to 4x (8x "
        "where 4x was the best), and the methods measured again on top of each configuration's best base. "
        "The figure shows linefit+, NiNo at the suite's interval and NiNo with the README's settings "
        "(`benchmarks.run.PLOT_METHODS`), a decaying schedule by its length saving; the tables have every "
        "method.",
        ["general_summary.md", "general_summary.png", "paired_time_general.md"],
        "python -m benchmarks.run --suite general --methods adam,linefit+,nino-ours; "
        "python -m benchmarks.run --suite general --tasks G-FM-CNN24-adam-cos@40 --methods "
        "adam,nino-ours/rate; python -m benchmarks.run --suite general --tasks G-FM-CNN24-adam-cos~lr8 "
        "--methods adam,nino-ours/rate; python -m benchmarks.run --suite general --tasks "
        "G-FM-CNN24-adam-cos~lr8@40 --methods adam,nino-ours/rate; python -m benchmarks.paired_time "
        "--suite general"),
    "architectures": (
        "NiNo on other architectures",
        "Models whose graph is traced from the forward pass (`nino(apply_fn=..., example_input=...)`): a "
        "GroupNorm ResNet and a ViT on CIFAR-10 (`optax_nowcast.tasks.ARCH_TASKS`, 1,500 steps, a jump every "
        "250, 3 seeds; no predictor was trained on these architectures), and the graphs' sizes and building "
        "times.",
        ["arch.md", "arch_A-C10-ResNet8-adam.png", "arch_A-C10-ViT32-adam.png", "graph_build.md"],
        "python -m benchmarks.run --suite arch --methods adam,linefit+,nino-traced; "
        "python -m benchmarks.graph_build"),
    "faults": (
        "Faults tried on purpose",
        "Non-finite gradients and losses injected at every phase of a period, damaged files, killed "
        "processes; and what is bit-identical.",
        ["faults.md"], "python -m benchmarks.faults"),
    "paired_time": (
        "Paired wall time",
        "Wall time to Adam's final value, with the costs of each method and of Adam measured side by side "
        "in one process (alternating chunks), so that machine load cancels out.",
        ["paired_time.md"], "python -m benchmarks.paired_time --tasks FM-32 --methods wnn+,nino-ours"),
    "weight_prediction": (
        "AdamW weight prediction",
        "Gradients at the weights predicted s steps ahead (Guan 2023), alone and under nowcasting's jumps; "
        "final metrics paired with Adam's on the same seed.",
        ["full_weight_prediction.md"], "python -m benchmarks.run --methods adam,wp1,wp2,wp3,linefit+wp2"),
    "cost": (
        "Memory and per-step cost",
        "What nowcasting costs between jumps (per-step time and state), what a jump costs, and how fast "
        "the learned predictors run.",
        ["overhead.md", "overhead.png", "memory_sweep.md", "memory_sweep.png", "memory.md", "chunk_speed.md",
         "nino_speed.md", "jump_cost.md"],
        "python -m benchmarks.overhead; python -m benchmarks.memory --sweep; python -m benchmarks.memory; "
        "python -m benchmarks.chunk_speed; python -m benchmarks.nino_speed; python -m benchmarks.jump_cost"),
    "demo": (
        "The demo (sklearn digits)",
        "`python -m optax_nowcast demo`: Adam vs Adam + nowcast(linefit) on sklearn's digits, 3 seeds.",
        ["demo_digits.md", "demo_digits.png"], "python -m optax_nowcast demo"),
    "metatraining": (
        "Meta-training at GPU scale: the plan and its costs",
        "The diverse recipe (`metatrain.recipe`, scale `gpu`): its configurations and, measured "
        "on the machine the dry run ran on, each model's compile and per-step collection cost and one NiNo "
        "training step. The device run itself waits for a lent GPU (`benchmarks/gpu_recipe.sh`).",
        ["recipe_gpu_dry_run.md"],
        "python -m optax_nowcast.metatrain recipe --scale gpu --dry-run --out /tmp/r "
        "--results benchmarks/results"),
    "lfd_synthetic": (
        "LFD-2 on the paper's synthetic sequences",
        "Shou et al.'s synthetic benchmark, regenerated.",
        ["lfd_synthetic.md"], "python -m benchmarks.lfd_synthetic"),
}


FIGURE = os.path.join(RESULTS, "nowcasting_FM-16.png")


def headline_figure(path: str = FIGURE, task: str = "FM-16",
                    methods: tuple[str, ...] = ("adam", "linefit+", "nino-ours", "nino")) -> str:
  """README's and the docs' figure: a few methods' validation and training curves on one task (the runs in
  ``benchmarks/results/runs/full``)."""
  runs = _finished_runs("full", 3, FULL, [RESULTS])[task]
  plot_task(task, {m: runs[m] for m in methods if m in runs}, path)
  return path


def headline_matrix() -> str:
  """The median step reductions of the headline methods, from ``full.json`` (legend and table)."""
  with open(os.path.join(RESULTS, "full.json")) as f:
    summary = json.load(f)["summary"]
  return format_matrix("full", summary, methods=HEADLINE)


def headline_table() -> str:
  """README's table: :func:`headline_matrix` and a link to every method's."""
  text = headline_matrix()
  link = "[`benchmarks/results/full_matrix.md`](benchmarks/results/full_matrix.md)"
  return f"{text}\n\nEvery method and task: {link} and the documentation's results pages."


def _page(title: str, intro: str, files: list[str], command: str, out_dir: str) -> str:
  lines = [f"# {title}", "", intro, "", f"Regenerate: `{command}`.", ""]
  for name in files:
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
      continue
    if name.endswith(".png"):
      shutil.copy(path, os.path.join(out_dir, name))
      lines += [f"![{name}]({name})", ""]
    else:
      with open(path) as f:
        lines += [f"## `{name}`", "", f.read().strip(), ""]
  return "\n".join(lines)


def write_pages(out_dir: str) -> list[str]:
  """Writes ``out_dir/index.md`` and one page per entry of :data:`PAGES`; returns the pages' paths."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, (title, intro, files, command) in PAGES.items():
    path = os.path.join(out_dir, f"{name}.md")
    with open(path, "w") as f:
      f.write(_page(title, intro, files, command, out_dir) + "\n")
    written.append(path)
  index = ["# Results", "",
           "Generated from `benchmarks/results` by `benchmarks/docs.py` at every build of these pages; each "
           "page names the command that regenerates its numbers.", "", headline_matrix(),
           "", "```{toctree}", ":maxdepth: 1", "", *PAGES, "```", ""]
  path = os.path.join(out_dir, "index.md")
  with open(path, "w") as f:
    f.write("\n".join(index))
  return [path, *written]


def cost_summary() -> str:
  """README's cost paragraph, from ``overhead.json`` and ``memory_sweep.json``."""
  with open(os.path.join(RESULTS, "overhead.json")) as f:
    over = json.load(f)["sizes"]
  with open(os.path.join(RESULTS, "memory_sweep.json")) as f:
    mem = json.load(f)["sizes"]

  def span(values, fmt="{:.2f}"):
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"

  def ratios(method, kind):
    return [r["methods"][method][f"{kind}_ratio"] for r in over]

  env = f"{over[0]['n_params'] / 1e6:.1f}M to {over[-1]['n_params'] / 1e6:.1f}M parameters"
  f32 = [r["rows"]["f32 history, plain step"]["peak_vs_adam"] / r["rows"]["f32 history, plain step"][
      "expected_vs_adam"] for r in mem]
  host = [r["rows"]["host history, plain step"]["peak_vs_adam"] for r in mem]
  full = [r["rows"]["f32 history, full step"]["peak_vs_adam"] / r["rows"]["f32 history, full step"][
      "expected_vs_adam"] for r in mem]
  rec = [r["rows"]["f32 history, record step"]["peak_vs_adam"] / r["rows"]["f32 history, record step"][
      "expected_vs_adam"] for r in mem]
  return (f"Measured side by side with Adam on MLPs of {env} (CPU; `python -m benchmarks.overhead`, "
          f"`python -m benchmarks.memory --sweep`). When the loop passes each step its "
          f"`onc.nowcast_phase(step, ...)` ([phases](docs/guides/memory_sharding_checkpointing.md)), a step "
          f"that neither records nor jumps takes {span(ratios('phased', 'plain'), '{:.3f}')}x Adam's, a "
          f"recording step {span(ratios('phased', 'record'))}x, a linefit jump "
          f"{span(ratios('phased', 'jump'))}x; without phases every step is the full one "
          f"({span(ratios('full', 'plain'), '{:.3f}')}x between recordings); Adam against itself, the "
          f"measurement's noise: {span(ratios('adam, again', 'plain'), '{:.3f}')}x. Peak memory: Adam's "
          f"plus the "
          f"history to within {100 * max(abs(v - 1) for v in f32 + rec):.1f} % for plain and recording steps "
          f"(float32 history; Adam's exactly, {span(host, '{:.3f}')}x, with the history in host memory); the "
          f"full step of a jump needs up to {100 * (max(full) - 1):.1f} % more, for the prediction.")


# README's block of the general suite's overall rows: NiNo's interval fixed at the suite's 100 steps against
# one scaled to the run (``schedules.for_run``; on the step clock too, ``nino-ours/run``), linefit+ the same
# way, the official checkpoint with the README's settings (``nino/rate/run``: what better-trained weights give
# with them), and the per-run NiNos again on top of each configuration's best base learning rate (the honest
# baseline).
FOR_RUN = ("linefit+", "linefit+/rate/run", "nino-ours", "nino-ours/rate", "nino-ours/run",
           "nino-ours/rate/run", "nino/rate/run")
FOR_RUN_TUNED = ("nino-ours", "nino-ours/rate/run", "nino/rate/run")


def for_run_summary(methods=FOR_RUN, tuned=FOR_RUN_TUNED) -> str:
  """The generalization suite's overall rows (``general_summary.json``) of ``methods`` at the suite's learning
  rates, and of ``tuned`` at each configuration's best base rate (``benchmarks.run.tuned_rows``)."""
  with open(os.path.join(RESULTS, "general_summary.json")) as f:
    summary = json.load(f)
  own = sorted((r for r in summary["rows"] if not is_variant(r["config"]) and r["method"] in methods),
               key=lambda r: methods.index(r["method"]))
  best = sorted((dict(r, method=f"{r['method']}, best base rate")
                 for r in tuned_rows(summary["rows"], summary.get("rate_check", []))[0]
                 if r["method"] in tuned), key=lambda r: tuned.index(r["method"].split(",")[0]))
  configs = sorted({r["config"] for r in own})
  per_run = sorted({for_run(ALL_TASKS[c].steps)["interval"] for c in configs})
  fixed = sorted({settings_for("general", c, GENERAL).interval for c in configs})
  return ("Generalization suite (`python -m benchmarks.run --suite general`, "
          f"[`general_summary.md`](benchmarks/results/general_summary.md)): {len(configs)} held-out "
          "configurations at their own learning rates, and (`best base rate`) on top of the base at the best "
          f"of {min(RATE_CHECK):g}-{max(RATE_CHECK):g}x its rate where that entry was run; `/run`: "
          "`nowcast(..., **schedules.for_run(steps))`, an interval of the run's steps / 50 "
          f"({' or '.join(map(str, per_run))} steps here), the others the suite's fixed interval "
          f"({' or '.join(map(str, fixed))} steps); `/rate`: `learning_rate=schedule`; `nino`: the official "
          "checkpoint (`predictors.nino(path)`), `nino-ours`: our shipped weights.\n\n"
          + "\n".join(_overall_lines(own + best)))


BLOCKS = {"headline": headline_table, "cost": cost_summary, "for_run": for_run_summary}


def update_readme(path: str = os.path.join(REPO, "README.md")) -> None:
  """Replaces README's generated blocks (``<!-- headline -->`` ... ``<!-- /headline -->``, and the same for
  ``cost`` and ``for_run``) with :func:`headline_table`, :func:`cost_summary` and :func:`for_run_summary`."""
  with open(path) as f:
    text = f.read()
  for name, make in BLOCKS.items():
    block = f"<!-- {name} -->\n{make()}\n<!-- /{name} -->"
    text, n = re.subn(rf"<!-- {name} -->.*?<!-- /{name} -->", lambda m, b=block: b, text, flags=re.S)
    if n != 1:
      raise ValueError(f"{path} has {n} {name} sections, expected 1.")
  with open(path, "w") as f:
    f.write(text)


if __name__ == "__main__":
  headline_figure()
  update_readme()
