"""Every script in benchmarks/ runs here at a tiny size: a changed signature fails a test,
not a user."""

import re

import pytest

from conftest import run_benchmark as run, smoke_args


def test_train_step_benchmark_reports_flops_matmul_share_the_dots_alone_and_the_input_pipeline(tfds_dir):
    result = run("train_step.py", "--config=experiments/translate_bible.py:smoke", f"--config.data.data_dir={tfds_dir}",
                 "--rows=8", "--length=16", "--steps=1", "--data_steps=2", "--variant=wide:model.d_ff=128")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if not line.startswith(("Downloading", "Dataset"))]
    assert lines[0].startswith("matmul 2048x2048 through XLA: float32 ")
    assert lines[1].startswith("wide: ") and "(1.00x the first)" in lines[1] and "of the float32 matmul" in lines[1]
    step_flops = float(re.search(r"([0-9.e+]+) FLOP/step", lines[1]).group(1))
    dots = re.fullmatch(r"wide's (\d+) dots alone, as plain matmuls in one program: .* s \(\d+% of the step\), "
                        r"([0-9.e+]+) FLOP, .* GFLOP/s = \d+% of the float32 matmul", lines[2])
    assert dots and int(dots.group(1)) > 0, lines[2]
    assert 0.5 * step_flops < float(dots.group(2)) < step_flops  # most of a step's FLOPs, not all
    assert lines[3].startswith("real data, 2 steps: ") and "non-padding source+target tokens/s" in lines[3]


def test_decode_benchmark_times_searches_with_and_without_the_cache(trained):
    workdir, data_dir, _ = trained
    config_args = [arg for arg in smoke_args(workdir, data_dir) if arg.startswith("--config")]
    result = run("decode.py", *config_args, f"--workdir={workdir}", "--split=validation", "--count=8",
                 "--uncached_count=4")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 6, validation: 8 sentences")
    assert lines[1].startswith("greedy: 8 sentences in ") and lines[2].startswith("beam 4: 8 sentences in ")
    assert "recomputing the prefix" in lines[3] and lines[4].startswith("beam 4, 4 sentences: ")


def test_decode_benchmark_times_language_model_sampling_with_and_without_the_cache():
    result = run("decode.py", "--config=experiments/lm_bible.py:smoke", "--count=2", "--new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = result.stdout.splitlines()
    assert line.startswith("sampling 8 tokens after 2 prompts of 16: ") and "recomputing the sequence" in line


def test_classifier_baselines_fit_the_classical_rows():
    result = run("classifier_baselines.py", "--only=digits", "--skip_transformers")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SVC" in result.stdout


@pytest.mark.parametrize("script, args", [("pytorch_marian.py", ["--steps=1"]),
                                          ("pytorch_generate.py", ["--export=missing", "--count=1"])])
def test_the_pytorch_references_say_where_they_run_when_torch_is_missing(script, args):
    result = run(script, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: torch is not installed; this reference runs in a separate venv with torch and transformers "
        f"(see the docstring of benchmarks/{script})"]


def test_ngram_baseline_reports_bits_per_character_on_validation_and_test(tfds_dir):
    result = run("ngram_lm.py", "--max_verses=200", "--orders=2,3", f"--data_dir={tfds_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if not line.startswith(("Downloading", "Dataset"))]
    assert lines[0].startswith("en: train 200 verses") and "scored as <unk>" in lines[0]
    assert lines[1].startswith("order 2: validation ") and lines[2].startswith("order 3: validation ")
    assert lines[3].startswith("test, order ") and "character perplexity" in lines[3]
    bpc = float(re.search(r": ([0-9.]+) bits per character", lines[3]).group(1))
    assert 0.5 < bpc < 8
    assert lines[4].startswith("wall time ")
