"""The generalization suite: held-out configurations, their optimizers and schedules, and its report."""

from __future__ import annotations

import dataclasses
import json
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import run as bench
from optax_nowcast.metatrain.pretrained import RECIPE
from optax_nowcast.tasks import GENERAL_TASKS, TASKS, ResCNN, spec_record
from optax_nowcast.tasks.tasks import Task


def test_configurations_are_held_out_and_diverse():
  assert len(GENERAL_TASKS) >= 12
  assert not set(GENERAL_TASKS) & set(TASKS) and not {t for t, *_ in RECIPE} & set(GENERAL_TASKS)
  specs = GENERAL_TASKS.values()
  assert {s.optimizer for s in specs} >= {"adam", "sgd", "nesterov", "lion", "adabelief"}
  assert any(s.optimizer == "adam" and s.weight_decay for s in specs)  # AdamW
  assert {s.schedule for s in specs} == {"constant", "warmup_cosine", "linear", "step"}
  assert {s.arch for s in specs} >= {"mlp", "resnet"} and len({s.batch_size for s in specs}) >= 3
  for paper in TASKS.values():  # other shapes than the paper tasks'
    assert all((s.features, s.lm_shape, s.arch) != (paper.features, paper.lm_shape, "") for s in specs)


@pytest.mark.parametrize("name", sorted(GENERAL_TASKS))
def test_each_optimizer_and_schedule_builds_and_steps(name):
  spec = GENERAL_TASKS[name]
  task = Task(spec, None, None, None, None, None, 0)
  tx = task.optimizer()
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  assert jnp.all(jnp.isfinite(updates["w"]))
  lr = spec.learning_rate_schedule()
  if spec.schedule == "constant":
    assert lr == spec.learning_rate
  else:  # warms up (or starts at the peak), decays, ends at or below a tenth of the peak
    rates = np.asarray([lr(s) for s in (0, spec.steps // 10, spec.steps // 2 + 1, spec.steps - 1)])
    assert rates.max() == pytest.approx(spec.learning_rate, rel=0.2) and rates[-1] <= 0.1 * rates.max() + 1e-9


def test_spec_record_keeps_the_paper_tasks_fingerprints():
  d = spec_record(TASKS["FM-16"])
  assert "optimizer" not in d and "schedule" not in d and "arch" not in d
  assert spec_record(GENERAL_TASKS["G-FM-MLP3-adamw-cos"])["schedule"] == "warmup_cosine"


def test_residual_cnn_has_norm_layers_and_residual_blocks():
  params = ResCNN((8, 16)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert {"norm0_a", "norm1_b", "res0_a", "down1", "Dense_0"} <= set(params)
  out = ResCNN((8, 16)).apply({"params": params}, jnp.ones((2, 28, 28, 1)))
  assert out.shape == (2, 10)


def test_length_tasks_stretch_the_schedule():
  s = bench.GENERAL
  spec = bench._spec_for("G-FM-MLP3-adamw-cos@70", s)
  assert spec.steps == 2100 and spec.name == "G-FM-MLP3-adamw-cos@70"
  lr = spec.learning_rate_schedule()
  assert float(lr(2099)) < 1e-5 < float(lr(1500))  # the cosine ends at the shorter length
  assert bench.settings_for("general", "G-digits-MLP1-nesterov-step@40", s).interval == 40


def test_a_length_task_trains_at_its_length(tmp_path):
  name = "G-digits-MLP4-lion-lin@40"
  res = bench.run_suite("general-quick", [name], ["adam"], 1, bench.GENERAL_QUICK, str(tmp_path), quiet=True)
  run = res["summary"][name]["methods"]["adam"]
  assert res["computed"] == 1 and run["per_seed"][0]["seed"] == 0
  with open(tmp_path / "runs" / "general-quick" / name / "adam" / "seed0.json") as f:
    assert json.load(f)["eval_steps"][-1] == 80  # 40 % of the quick suite's 200 steps


def test_a_per_run_method_records_every_fiftieth_of_the_run(tmp_path):
  """``/run`` methods take ``interval`` from the run's length (``schedules.for_run``), not the suite's: a
  jump every ``5 * (steps // 50)`` steps, at any length (the quick suite's 200 steps and 40 % of them)."""
  names = ["G-digits-MLP4-lion-lin", "G-digits-MLP4-lion-lin@40"]
  bench.run_suite("general-quick", names, ["adam", "linefit+/rate/run"], 1, bench.GENERAL_QUICK,
                  str(tmp_path), quiet=True)
  for name, steps in zip(names, (200, 80), strict=True):
    with open(tmp_path / "runs" / "general-quick" / name / "linefit+" / "rate" / "run" / "seed0.json") as f:
      run = json.load(f)
    period = 5 * (steps // 50)
    assert run["n_jumps"] == len(range(period, steps, period))
    if period >= bench.GENERAL_QUICK.eval_every:  # jump steps are read once per evaluation
      assert run["jump_steps"] == [j + 1 for j in range(period, steps, period)]
    task = bench.make_suite_task(name, None, bench.GENERAL_QUICK)
    assert bench.method_settings(task, "linefit+/rate/run", bench.GENERAL_QUICK).interval == steps // 50
    assert bench.method_settings(task, "linefit+/rate", bench.GENERAL_QUICK).interval == 10  # the suite's


def _run(seed, final, curve=None):
  curve = curve or [0.5, final]
  return {"seed": seed, "final_full_val_metric": final, "val_metric": curve, "eval_steps": [10, 20]}


def test_length_saving_is_the_shortest_length_reaching_the_base():
  found = {"c": {"adam": [_run(0, 0.90)], "m": [_run(0, 0.91)]}}
  for pct, (a, m) in zip(bench.LENGTHS, [(0.80, 0.86), (0.84, 0.90), (0.88, 0.92), (0.90, 0.93)],
                         strict=True):
    found[f"c@{pct}"] = {"adam": [_run(0, a)], "m": [_run(0, m)]}
  # m reaches 0.90 at 55 %, the base only at 85 %: 1 - 55 / 85
  assert bench._length_saving(found, "c", "m", 0, 0.90, True) == pytest.approx(100 * (1 - 55 / 85))
  assert bench._length_saving({"c": found["c"]}, "c", "m", 0, 0.90, True) is None  # no sweep
  # a method that reaches the goal at no length, full length included, is "never", not left out
  assert bench._length_saving(found, "c", "m", 0, 0.95, True) == bench.NEVER
  del found["c@70"]["m"]
  assert bench._length_saving(found, "c", "m", 0, 0.95, True) is None  # a length not run: no figure


def test_length_paired_time_times_each_shortest_run_with_the_paired_costs():
  def run(final, steps, jumps):
    return {"seed": 0, "final_full_val_metric": final, "val_metric": [0.5, final], "jump_steps": jumps,
            "eval_steps": [steps // 2, steps]}
  found = {"c": {"adam": [run(0.90, 1000, [])], "m": [run(0.92, 1000, [200, 400, 600, 800])]}}
  for pct, (a, m) in zip(bench.LENGTHS, [(0.80, 0.86), (0.84, 0.90), (0.88, 0.92), (0.90, 0.93)],
                         strict=True):
    n = 10 * pct
    found[f"c@{pct}"] = {"adam": [run(a, n, [])], "m": [run(m, n, list(range(200, n, 200)))]}
  costs = {"adam_s_per_step": 1e-3, "s_per_step": 2e-3, "period_overhead_s": 0.05}
  # m's shortest: 550 steps and 2 jumps (200, 400); the base's: 850 steps
  want = 100 * (1 - (550 * 2e-3 + 2 * 0.05) / (850 * 1e-3))
  assert bench._length_saving(found, "c", "m", 0, 0.90, True, costs) == pytest.approx(want)
  assert bench._length_saving(found, "c", "m", 0, 0.95, True, costs) == bench.NEVER


def test_a_seed_that_never_reaches_counts_against_the_length_saving():
  found = {"c": {"adam": [_run(s, 0.90) for s in range(3)], "m": [_run(s, f) for s, f in
                                                                 enumerate([0.92, 0.80, 0.80])]}}
  for pct in bench.LENGTHS:
    found[f"c@{pct}"] = {"adam": [_run(s, 0.85) for s in range(3)],
                         "m": [_run(s, 0.91 if s == 0 else 0.80) for s in range(3)]}
  with mock.patch.dict(bench.ALL_TASKS, {"c": bench.ALL_TASKS["G-digits-MLP4-lion-lin"]}):
    rows = bench.general_rows(found, bench.GENERAL)
    table = bench.format_general("general", rows)
  (row,) = rows
  # seed 0 saves 60 %, seeds 1 and 2 never reach: the median seed never reaches
  assert row["length_never"] == 2 and row["length_saving"] is None
  assert "| never (2 never) |" in table and "| never (over 1) |" in table


def test_general_quick_writes_one_table_and_one_plot(tmp_path):
  res = bench.main(["--suite", "general-quick", "--methods", "adam,linefit+,linefit+/rate", "--out",
                    str(tmp_path), "--quiet"])
  assert res["computed"] == 3 * len(bench.SUITES["general-quick"][1])
  with open(tmp_path / "general-quick_summary.json") as f:
    rows = json.load(f)["rows"]
  assert {r["method"] for r in rows} == {"linefit+", "linefit+/rate"} and len(rows) == 6
  assert os.path.getsize(tmp_path / "general-quick_summary.png") > 0
  assert all(r["final_diff"] is not None for r in rows)
  # on the constant-rate configuration the rate clock is the step clock: the same run
  const = [r for r in rows if r["schedule"] == "constant"]
  assert const[0]["final_diff"] == const[1]["final_diff"]
  assert not any(r["paired_measured"] for r in rows)
  # paired wall time of one configuration joins the summary once measured
  from benchmarks import paired_time
  name = const[0]["config"]
  timed = paired_time.main(["--suite", "general-quick", "--tasks", name, "--methods", "linefit+",
                            "--repeats", "2", "--steps", "10", "--out", str(tmp_path)])
  bench.report("general-quick", bench.SUITES["general-quick"][2], bench.GENERAL_QUICK, str(tmp_path))
  with open(tmp_path / "general-quick_summary.json") as f:
    rows = json.load(f)["rows"]
  row = next(r for r in rows if r["config"] == name and r["method"] == "linefit+")
  assert row["paired_measured"] and sum(r["paired_measured"] for r in rows) == 1
  assert row["paired_time"] == timed["tasks"][name]["linefit+"]["median"]["time_reduction_pct"]
  table = (tmp_path / "general-quick_summary.md").read_text()
  assert "paired time" in table and "of 1 |" in table


def test_rate_methods_pass_the_tasks_schedule():
  """``linefit+/rate`` clocks the task's own schedule (here Lion's linear warmup and decay)."""
  import optax_nowcast as onc

  spec = dataclasses.replace(GENERAL_TASKS["G-digits-MLP4-lion-lin"], steps=200)
  task = Task(spec, None, None, None, None, None, 0)
  tx = bench.METHODS["linefit+/rate"].build(task, bench.GENERAL_QUICK)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  for _ in range(7):
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
  want = sum(float(spec.learning_rate_schedule()(i)) for i in range(7))
  assert float(onc.find_nowcast_state(state).clock) == pytest.approx(want, rel=1e-5)
  plain = bench.METHODS["linefit+"].build(task, bench.GENERAL_QUICK)
  state = plain.init(params)
  _, state = plain.update({"w": jnp.ones(2)}, state, params)
  assert float(onc.find_nowcast_state(state).clock) == 1.0  # the step clock


def test_nino_methods_trace_the_models_names_cannot_express():
  """On the residual GroupNorm CNN, nino-ours reads its graph from the forward pass (names refuse it); on
  an MLP, from the names as before."""
  import optax_nowcast as onc

  res = bench.make_suite_task("G-FM-Res-adam", None, bench.GENERAL_QUICK)
  assert not bench._names_readable(res)
  params = res.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="apply_fn="):
    onc.predictors.nino().init(params)
  tx = bench.METHODS["nino-ours"].build(res, bench.GENERAL_QUICK)
  assert onc.find_nowcast_state(tx.init(params)) is not None
  mlp = bench.make_suite_task("G-digits-MLP2-adabelief", None, bench.GENERAL_QUICK)
  assert bench._names_readable(mlp)


def test_the_official_checkpoint_row_has_the_readme_settings_of_ours(monkeypatch, tmp_path):
  """``nino/rate/run`` differs from ``nino-ours/rate/run`` in the weights only: the same ``nowcast``
  arguments (interval from ``for_run``, k-decay, the learning-rate clock) and graph tracing, with the
  official checkpoint from ``$OPTAX_NOWCAST_OFFICIAL_DIR`` (a clear error naming it when it is not set)."""
  import optax_nowcast as onc

  monkeypatch.delenv("OPTAX_NOWCAST_NINO_WEIGHTS", raising=False)
  monkeypatch.delenv("OPTAX_NOWCAST_OFFICIAL_DIR", raising=False)
  res = bench.make_suite_task("G-FM-Res-adam", None, bench.GENERAL_QUICK)  # residual: its graph is traced
  cos = bench.make_suite_task("G-FM-CNN24-adam-cos", None, bench.GENERAL_QUICK)  # warmup + cosine
  with pytest.raises(ValueError, match="OPTAX_NOWCAST_OFFICIAL_DIR"):
    bench.METHODS["nino/rate/run"].build(res, bench.GENERAL_QUICK)
  (tmp_path / "nino_no_posw.npz").write_bytes(b"")
  monkeypatch.setenv("OPTAX_NOWCAST_OFFICIAL_DIR", str(tmp_path))
  for task, traced, decaying in ((res, True, False), (cos, False, True)):
    calls = {}
    with mock.patch.object(onc.predictors, "nino", return_value="official") as nino:
      for method in ("nino/rate/run", "nino-ours/rate/run"):  # ours holds the real nino (bound at import)
        with mock.patch.object(onc, "nowcast", return_value=optax.identity()) as nowcast:
          s = bench.method_settings(task, method, bench.GENERAL_QUICK)
          bench.METHODS[method].build(task, s)
        assert s.interval == onc.schedules.for_run(task.spec.steps)["interval"]
        (args, kw), = nowcast.call_args_list
        lr, n = kw["learning_rate"], task.spec.steps
        rate = [float(lr(i) if callable(lr) else lr) for i in (n // 4, n // 2, n - 1)]
        calls[method] = (args[0], {k: v for k, v in kw.items() if k != "learning_rate"}, rate)
    (nargs, nkw), = nino.call_args_list  # the official's
    assert nargs == (str(tmp_path / "nino_no_posw.npz"),)
    assert sorted(nkw) == (["apply_fn", "example_input"] if traced else [])
    official, ours = calls["nino/rate/run"], calls["nino-ours/rate/run"]
    assert official[0] == "official" and isinstance(ours[0], onc.Predictor)
    assert official[1:] == ours[1:]
    assert isinstance(official[1]["horizon"], onc.schedules.KDecay) and official[1]["horizon"].max_k == 40
    assert (official[2][0] > official[2][1] > official[2][2]) == decaying  # the clock reads the schedule


def test_wnn_plus_row_has_the_readme_settings_of_nino_ours():
  """``wnn+/rate/run`` differs from ``nino-ours/rate/run`` in the predictor only: the same ``nowcast``
  arguments (interval from ``for_run``, k-decay from 40, the learning-rate clock), WNN+ on the traced graph
  where the names cannot express the model."""
  import optax_nowcast as onc

  for name in ("G-FM-Res-adam", "G-FM-CNN24-adam-cos"):
    task = bench.make_suite_task(name, None, bench.GENERAL_QUICK)
    calls = {}
    for method in ("wnn+/rate/run", "nino-ours/rate/run"):
      with mock.patch.object(onc, "nowcast", return_value=optax.identity()) as nowcast:
        s = bench.method_settings(task, method, bench.GENERAL_QUICK)
        bench.METHODS[method].build(task, s)
      assert s.interval == onc.schedules.for_run(task.spec.steps)["interval"]
      (args, kw), = nowcast.call_args_list
      lr = kw.pop("learning_rate")
      rate = [float(lr(i) if callable(lr) else lr) for i in (0, task.spec.steps // 2, task.spec.steps - 1)]
      calls[method] = (args[0].name, kw, rate)
    wnn, nino = calls["wnn+/rate/run"], calls["nino-ours/rate/run"]
    assert (wnn[0], nino[0]) == ("wnn_plus", "nino")
    assert wnn[1:] == nino[1:] and wnn[1]["horizon"].max_k == 40


def test_base_rate_entries_scale_the_learning_rate_and_are_checked():
  name = "G-digits-MLP2-adabelief"
  spec = bench._spec_for(f"{name}~lr2", bench.GENERAL)
  assert spec.learning_rate == pytest.approx(2 * GENERAL_TASKS[name].learning_rate)
  assert spec.name == f"{name}~lr2" and spec.steps == GENERAL_TASKS[name].steps
  assert bench.base_name(f"{name}~lr0.5") == name and bench.is_variant(f"{name}~lr0.5")
  assert not bench.is_variant(name)
  both = bench._spec_for(f"{name}~lr2@55", bench.GENERAL)  # the length sweep on top of the base at 2x
  assert both.learning_rate == spec.learning_rate and both.steps == bench._spec_for(f"{name}@55",
                                                                                   bench.GENERAL).steps
  assert both.steps < spec.steps and bench.base_name(both.name) == name
  for bad in (f"{name}~lrx", f"{name}@0", f"{name}@40~lr2", f"{name}~lr0", f"{name}~lr2@101"):
    with pytest.raises(ValueError, match="<config>~lr<m>"):
      bench._spec_for(bad, bench.GENERAL)
  # the fingerprint differs from the configuration's own: its runs are never taken for the base's
  assert bench._fingerprint(spec, "adam", 0, bench.GENERAL) != bench._fingerprint(
      bench._spec_for(name, bench.GENERAL), "adam", 0, bench.GENERAL)
  found = {name: {"adam": [_run(s, f) for s, f in enumerate([0.90, 0.91])]},
           f"{name}~lr0.5": {"adam": [_run(s, f) for s, f in enumerate([0.80, 0.82])]},
           f"{name}~lr2": {"adam": [_run(s, f) for s, f in enumerate([0.93, 0.95])]}}
  (row,) = bench.rate_rows(found)
  # x2 is better than x1 by 3.5 points, more than x1's spread (1 point): not tuned
  assert row["best"] == 2.0 and not row["tuned"] and row["means"]["0.5"] == pytest.approx(0.81)
  assert "| x2 (edge) | no |" in bench.format_rate_check("general", [row])
  # the edge is each configuration's own: x2 is inside the range of one run at x4 too (worse there)
  wider = {**row, "means": {**row["means"], "4": 0.5}}
  lines = bench.format_rate_check("general", [row, wider]).splitlines()
  assert "| — | 1.00 | x2 (edge) | no |" in lines[-2] and lines[-1].endswith("| 50.00 | 1.00 | x2 | no |")
  found[f"{name}~lr2"]["adam"][1]["final_full_val_metric"] = 0.87  # mean 0.90: x1 (0.905) is the best
  assert bench.rate_rows(found)[0]["tuned"]


def test_methods_on_a_base_rate_entry_get_their_own_table():
  name = "G-digits-MLP2-adabelief"
  curve = [0.5, 0.8, 0.9, 0.9]
  run = {"seed": 0, "final_full_val_metric": 0.9, "val_metric": curve, "eval_steps": [10, 20, 30, 40]}
  fast = {**run, "val_metric": [0.5, 0.9, 0.9, 0.9]}
  found = {name: {"adam": [run], "m": [run]}, f"{name}~lr2": {"adam": [run], "m": [fast]}}
  rows = bench.general_rows(found, dataclasses.replace(bench.GENERAL, smooth=1))
  assert [(r["config"], r["method"]) for r in rows] == [(name, "m"), (f"{name}~lr2", "m")]
  assert rows[0]["reduction"] == 0.0 and rows[1]["reduction"] == pytest.approx(100 * (1 - 20 / 30))
  table = bench.format_general("general", rows)
  main, other = table.split("On top of the base at another learning rate")
  assert f"| {name} |" in main and "~lr2" not in main and f"| {name}~lr2 | constant | m |" in other
  assert other.count("| configuration | schedule | method |") == 1  # its rows under their own header


def test_the_tuned_view_takes_each_configuration_at_its_best_rate_timed_with_its_costs():
  name = "G-digits-MLP2-adabelief"
  run = {"seed": 0, "final_full_val_metric": 0.9, "val_metric": [0.5, 0.8, 0.9, 0.9],
         "eval_steps": [10, 20, 30, 40], "jump_steps": []}
  fast = {**run, "val_metric": [0.5, 0.9, 0.9, 0.9], "jump_steps": [15, 35]}
  found = {name: {"adam": [run], "m": [run]}, f"{name}~lr2": {"adam": [run], "m": [fast]}}
  costs = {"s_per_step": 0.002, "adam_s_per_step": 0.001, "period_overhead_s": 0.005}
  paired = {name: {"m": {**costs, "median": {"time_reduction_pct": -5.0}}}}
  rows = bench.general_rows(found, dataclasses.replace(bench.GENERAL, smooth=1), paired)
  assert rows[0]["paired_time"] == -5.0 and rows[0]["paired_costs_of"] is None  # measured itself
  # ~lr2: the configuration's costs on its own steps: 20 steps and the one jump before them, base 30 steps
  assert rows[1]["paired_costs_of"] == name
  assert rows[1]["paired_time"] == pytest.approx(100 * (1 - (20 * 0.002 + 0.005) / (30 * 0.001)))
  assert bench.tuned_rows(rows, [{"config": name, "best": 2.0}]) == ([rows[1]], [])
  assert bench.tuned_rows(rows, [{"config": name, "best": 1.0}]) == ([rows[0]], [])
  assert bench.tuned_rows(rows, [{"config": name, "best": 4.0}]) == ([], [f"{name}~lr4"])
  table = bench.format_general("general", rows, [{"config": name, "best": 2.0}])
  _, tuned = table.split("At each configuration's best base learning rate")
  assert f"| {name}~lr2 | constant | m |" in tuned and f"| {name} | constant |" not in tuned
  assert "On top of the base at another learning rate" not in table  # its one ~lr row is the tuned one
  assert "No method measured yet" in bench.format_general("general", rows, [{"config": name, "best": 4.0}])


def test_the_summary_figure_shows_the_readme_methods_or_else_every_method(tmp_path):
  """``plot_general`` draws ``PLOT_METHODS`` when the rows have them (a decaying configuration by its length
  saving, a median seed that never reaches as a cross) and every method when they have none."""
  def row(config, method, schedule, value, never):
    decaying = schedule != "constant"
    return {"config": config, "method": method, "schedule": schedule,
            "reduction_reached": None if decaying else value, "never": 0 if decaying else never,
            "length_saving": value if decaying else None, "length_never": never if decaying else 0,
            "final_diff": 0.01, "base_spread": 0.02}
  rows = [row("G-FM-MLP2-adam", "nino-ours/rate/run", "constant", 25.0, 0),
          row("G-FM-MLP3-adamw-cos", "nino-ours/rate/run", "warmup_cosine", None, 3),
          row("G-FM-MLP2-adam", "wnn+", "constant", 10.0, 1)]
  with mock.patch("matplotlib.axes.Axes.barh", autospec=True) as barh:
    assert bench.plot_general(rows, str(tmp_path / "a.png")) == str(tmp_path / "a.png")
  assert [c.args[2] for c in barh.call_args_list] == [25.0]  # wnn+ is not drawn; the cross is no bar
  with mock.patch("matplotlib.axes.Axes.barh", autospec=True) as barh:
    bench.plot_general(rows[2:], str(tmp_path / "b.png"))
  assert [c.args[2] for c in barh.call_args_list] == [10.0]
