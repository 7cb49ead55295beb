"""Sweeps: the product/zipped helpers and run names, checks before any run starts, the
Slurm array, and one real two-run sweep of the digits ViT through launch.py."""

import csv
import os
import subprocess

import pytest
from conftest import ROOT, launch

from ml_transformer import sweep

LR, LAYERS = "optimizer.learning_rate", "model.num_layers"

NOT_AN_EXPERIMENT = '''
import ml_collections
from ml_transformer import sweep

BAD = {"model.no_such_field": 1, "no_such_group.x": 1, "model.num_layers": "big", "model.dropout_rate": 1.5}


def get_config(arg=None):
    return ml_collections.ConfigDict({"total_steps": 4, "final_split": "test", "best_metric": "accuracy",
                                      "model": {"num_layers": 2, "dropout_rate": 0.1}})


def get_sweep(arg=None):
    if arg is None:  # runs that fail: launch.py cannot train this config
        return sweep.product({"model.num_layers": [1, 3]})
    return [{"model.num_layers": 1}, {arg: BAD[arg]}]
'''


@pytest.fixture
def not_an_experiment(tmp_path):
    path = tmp_path / "not_an_experiment.py"
    path.write_text(NOT_AN_EXPERIMENT)
    return path


def test_product_is_every_combination_the_last_axis_fastest():
    assert sweep.product({LR: [1e-3, 1e-2]}, seed=[0, 1, 2]) == [
        {LR: 1e-3, "seed": 0}, {LR: 1e-3, "seed": 1}, {LR: 1e-3, "seed": 2},
        {LR: 1e-2, "seed": 0}, {LR: 1e-2, "seed": 1}, {LR: 1e-2, "seed": 2},
    ]
    assert sweep.product({LR: [1e-3, 1e-2], LAYERS: [2, 4]}) == sweep.product({LR: [1e-3, 1e-2]}, {LAYERS: [2, 4]})


def test_zipped_pairs_values_and_nests_in_a_product():
    pairs = sweep.zipped({LAYERS: [2, 4], "model.d_model": [128, 64]})
    assert pairs == [{LAYERS: 2, "model.d_model": 128}, {LAYERS: 4, "model.d_model": 64}]
    runs = sweep.product({LR: [1e-3, 3e-3, 1e-2]}, pairs)
    assert len(runs) == 6 and runs[1] == {LR: 1e-3, LAYERS: 4, "model.d_model": 64}
    with pytest.raises(ValueError, match="different lengths"):
        sweep.zipped({LAYERS: [2, 4]}, seed=[0, 1, 2])
    with pytest.raises(ValueError, match=f"{LR}: swept twice"):
        sweep.product({LR: [1e-3]}, sweep.zipped({LR: [1e-2]}))


def test_run_names_are_readable_unique_and_filesystem_safe():
    assert sweep.run_names(sweep.product({LR: [0.001, 3e-05]}, {LAYERS: [2]})) == [
        "learning_rate=0.001,num_layers=2", "learning_rate=3e-05,num_layers=2"]
    assert sweep.run_names([{"model.dropout_rate": 0.1, "model.attention_dropout_rate": 0.0,
                             "data.dropout_rate": 0.2}]) == [
        "model.dropout_rate=0.1,attention_dropout_rate=0.0,data.dropout_rate=0.2"]
    assert sweep.run_names([{"model.variant": "B/16"}, {}]) == ["variant=B_16", "default"]
    with pytest.raises(ValueError, match="two runs named variant=B_16"):
        sweep.run_names([{"model.variant": "B/16"}, {"model.variant": "B_16"}])


@pytest.mark.parametrize("key", ["model.no_such_field", "no_such_group.x", "model.num_layers", "model.dropout_rate"])
def test_a_bad_override_fails_with_one_line_before_any_run(tmp_path, not_an_experiment, key):
    result = launch(f"--config={not_an_experiment}:{key}", f"--workdir={tmp_path / 'sweep'}", "--mode=sweep")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], result.stderr
    assert not (tmp_path / "sweep").exists()


def test_failed_runs_are_reported_after_the_others_ran(tmp_path, not_an_experiment):
    result = launch(f"--config={not_an_experiment}", f"--workdir={tmp_path}", "--mode=sweep", "--parallel=2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 of 2 runs failed (see their launch.log): num_layers=1 (exit 1), num_layers=3 (exit 1)")
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["failed (exit 1)"] * 2
    assert all((tmp_path / name / "launch.log").read_text().strip() for name in ("num_layers=1", "num_layers=3"))


def test_a_config_without_get_sweep_fails_naming_the_file(tmp_path):
    result = launch("--config=experiments/textcls_bible.py", f"--workdir={tmp_path}", "--mode=sweep")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: experiments/textcls_bible.py: no get_sweep")


def test_slurm_emission_writes_an_array_of_the_same_commands(tmp_path):
    workdir = tmp_path / "sweep"
    result = launch("--config=experiments/vit_digits.py:smoke", f"--workdir={workdir}", "--mode=sweep",
                    "--sweep_emit=slurm", "--config.total_steps=4")
    assert result.returncode == 0, result.stderr
    script = workdir / "sweep.sbatch"
    assert result.stdout.strip() == str(script) and os.listdir(workdir) == ["sweep.sbatch"]
    text = script.read_text()
    assert "#SBATCH --array=0-1\n" in text and "$SLURM_ARRAY_TASK_ID" in text
    # Task 1 of the array, with a `python` that writes down its arguments.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "python").chmod(0o755)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "PATH": f"{fake}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(script)], env=env, check=True)
    run_dir = workdir / "learning_rate=0.01"
    assert (run_dir / "launch.log").read_text().splitlines() == [
        os.path.join(ROOT, "launch.py"), "--config=experiments/vit_digits.py:smoke", f"--workdir={run_dir}",
        "--config.total_steps=4", f"--config.{LR}=0.01"]
    assert not (workdir / "learning_rate=0.001").exists()


def test_a_sweep_runs_in_parallel_writes_its_results_and_skips_finished_runs(tmp_path):
    # The data is not prepared yet: both runs start preparing it at once.
    args = ["--config=experiments/vit_digits.py:smoke", f"--workdir={tmp_path / 'sweep'}", "--mode=sweep",
            "--parallel=2", f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.total_steps=4",
            "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2"]
    result = launch(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ["learning_rate=0.001", "learning_rate=0.01"]
    for name in names:
        assert (tmp_path / "sweep" / name / "eval" / "test-4.json").exists()
        assert "test @ step 4" in (tmp_path / "sweep" / name / "launch.log").read_text()
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [row["name"] for row in rows] == names and [row[LR] for row in rows] == ["0.001", "0.01"]
    assert all(row["status"] == "trained" and 0 <= float(row["accuracy"]) <= 1 for row in rows)
    table = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert table[0].startswith(f"| name | {LR} | status |") and len(table) == 4
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rerun = launch(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert all(f"{name}: skipped" in rerun.stdout for name in names)
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["skipped", "skipped"] and rows[0]["accuracy"]
