"""The benchmark scripts run (at tiny sizes): a changed signature fails here, not for a user."""

import subprocess
import sys

from conftest import ROOT


def test_train_step_benchmark_times_its_variants_side_by_side():
    result = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--config=experiments/translate_bible.py:smoke", "--length=16",
         "--steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["as_is", "no_dropout", "rbg"]
    assert lines[0].endswith("(1.00x the first)") and all(" s/step " in line for line in lines)
