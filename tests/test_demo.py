"""The demo's measuring functions and a quick end-to-end run."""

import json
import os

import numpy as np

from optax_nowcast import demo


def test_steps_to_target_uses_the_moving_average():
  steps = np.arange(1, 9) * 10
  curve = np.array([0.1, 0.2, 0.9, 0.2, 0.6, 0.7, 0.8, 0.8])  # one lucky spike at step 30
  assert demo.steps_to_target(curve, steps, 0.7, window=1) == 30
  assert demo.steps_to_target(curve, steps, 0.7, window=3) == 70  # mean(.6,.7,.8) = .7
  assert demo.steps_to_target(curve, steps, 0.95, window=3) is None
  loss = 1.0 - curve
  assert demo.steps_to_target(loss, steps, 0.3, window=3, higher_is_better=False) == 70


def test_quick_demo_end_to_end(tmp_path):
  result = demo.main(["--quick", "--quiet", "--out", str(tmp_path)])
  for ext in ("json", "md", "png"):
    assert os.path.getsize(tmp_path / f"demo_digits.{ext}") > 0
  saved = json.loads((tmp_path / "demo_digits.json").read_text())
  rows = {r["method"]: r for r in saved["rows"]}
  # 400 steps, period 100: the jumps replace updates 101, 201, 301.
  assert rows["adam+nowcast(linefit)"]["n_jumps"] == 3 and rows["adam"]["n_jumps"] == 0
  assert saved["jump_steps"] == [101, 201, 301]
  assert rows["adam"]["steps_to_acc_target"] is not None  # Adam reaches its own final accuracy
  assert rows["adam"]["final_val_acc"] > 0.8  # it really learned the digits
  assert "adam+nowcast(linefit)" in result["table"]


def test_cli_names_an_unknown_command(capsys):
  from optax_nowcast.__main__ import main

  assert main(["bogus"]) == 2
  out = capsys.readouterr()
  assert "unknown command 'bogus'" in out.err and "demo" in out.out
  assert main(["--help"]) == 0
