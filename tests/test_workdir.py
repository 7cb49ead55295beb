"""A workdir that nothing corrupts, and failures in one line: the lock a training run holds,
Ctrl-C, a full disk, unwritable results, filesystem errors, prediction input, derived
config values, result names per decoding setting, and BLEU recomputed from the TSV."""

import csv
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest
import sacrebleu
from conftest import DECODING, ROOT, STEPS, experiment_config, launch, launch_command, smoke_args

from ml_transformer import evaluate, sharding, sweep, workdir as workdirs
from ml_transformer.data import pipeline, tokenizer
from ml_transformer.tasks.translation import TranslationTask
from ml_transformer.train.checkpoints import Checkpoints


def copy_of(trained, tmp_path):
    """A copy of the shared smoke run's workdir, to change freely."""
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    return copy


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def steps_saved(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def temporary_folders(workdir) -> list[str]:
    return [p.name for p in (workdir / "checkpoints").rglob("*orbax-checkpoint-tmp*")]


# --- the lock ---------------------------------------------------------------------------


def test_a_second_training_run_is_refused_while_reading_modes_still_work(trained, tmp_path):
    workdir, data_dir, _ = trained
    copy = copy_of(trained, tmp_path)
    before = (copy / "metrics.jsonl").read_text(), (copy / "config.json").read_text()
    with workdirs.held(str(copy)):
        result = launch(*smoke_args(copy, data_dir), "--config.total_steps=9")
        assert result.returncode == 1
        assert last_line(result.stderr) == (f"error: --workdir={copy}: in use by process {os.getpid()} on "
                                            f"{os.uname().nodename}; wait for it to end or choose another workdir")
        prediction = launch(*smoke_args(copy, data_dir), "--mode=predict", stdin="Jesus wept.\n")
        assert prediction.returncode == 0 and len(prediction.stdout.splitlines()) == 1, prediction.stderr[-3000:]
    assert ((copy / "metrics.jsonl").read_text(), (copy / "config.json").read_text()) == before
    assert steps_saved(copy) == [3, STEPS]


def test_the_lock_of_a_killed_run_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ml_transformer import workdir\n"
                               f"with workdir.held({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(workdirs.WorkdirError, match=f"in use by process {holder.pid} "):
        with workdirs.held(str(tmp_path)):
            pass
    holder.kill()
    holder.wait()
    with workdirs.held(str(tmp_path)):  # released by the kernel, though the lock file remains
        assert (tmp_path / workdirs.LOCK_FILE).exists()


# --- signals and failed saves -----------------------------------------------------------


def start_training(workdir, data_dir, log) -> subprocess.Popen:
    """A long training run, its output in the file `log`."""
    args = smoke_args(workdir, data_dir) + ["--config.total_steps=1000", "--config.checkpoint_every_steps=2",
                                            "--config.eval_every_steps=1000"]
    with log.open("w") as out:
        return subprocess.Popen(launch_command(*args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_until(process, log, done):
    """Returns once `done()`; fails if the process ends first."""
    while not done():
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.01)


def test_ctrl_c_saves_a_checkpoint_at_the_end_of_the_step_and_exits_cleanly(trained, tmp_path):
    _, data_dir, _ = trained
    workdir, log = tmp_path / "run", tmp_path / "log"
    process = start_training(workdir, data_dir, log)
    wait_until(process, log, lambda: (workdir / "checkpoints" / "2").exists())
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "Ctrl-C: stopping after this step with a checkpoint" in output and "Traceback" not in output
    stopped = int(last_line(output).split("stopped by SIGINT after step ")[1].split(",")[0])
    assert steps_saved(workdir)[-1] == stopped and not temporary_folders(workdir)


def test_a_second_ctrl_c_exits_at_once():
    script = """if True:
        import os, signal, time
        from ml_transformer.train.loop import StopRequest
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            while not stop.requested(1):
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)
    """
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130
    assert [line for line in result.stderr.splitlines() if line][-2:] == [
        "Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to exit at once)",
        "error: interrupted twice: exited at once; the checkpoints saved before are intact"]


def test_a_failed_save_stops_the_run_at_once_leaving_the_checkpoints_before_it(trained, tmp_path):
    """Files over 20 kB cannot be written (as on a full disk): a checkpoint of the smoke model
    cannot be saved, while the run's small files can. The next start opens the checkpoints
    as below: the latest complete one restores and the failed save's remains are removed."""
    _, data_dir, _ = trained
    copy = copy_of(trained, tmp_path)
    args = smoke_args(copy, data_dir) + ["--config.total_steps=7", "--config.checkpoint_every_steps=1"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # noqa: E731
    result = subprocess.run(launch_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            preexec_fn=limit)
    assert result.returncode == 1
    assert last_line(result.stderr) == (
        f"error: saving checkpoint {copy}/checkpoints/{STEPS + 1} failed (File too large); the checkpoints saved "
        "before it are intact and the next start resumes from the latest")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 30
    assert steps_saved(copy) == [3, STEPS] and temporary_folders(copy)  # the failed save's remains

    checkpoints = Checkpoints(str(copy / "checkpoints"), write=True)  # as the next start opens them
    assert checkpoints.latest_step() == STEPS
    layout = checkpoints.saved_layout(STEPS, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert checkpoints.restore(STEPS, layout)[1] == {"step": STEPS}
    checkpoints.close()
    deadline = time.monotonic() + 30  # Orbax removes them in the background, before any save
    while temporary_folders(copy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not temporary_folders(copy)


# --- files that cannot be written -------------------------------------------------------


def test_an_evaluation_that_cannot_write_its_files_prints_its_metrics_first(trained, tmp_path):
    _, data_dir, _ = trained
    copy = copy_of(trained, tmp_path)
    shutil.rmtree(copy / "eval")
    (copy / "eval").write_text("a file where the results folder should be")
    result = launch(*smoke_args(copy, data_dir), "--mode=eval", "--split=validation")
    assert result.returncode == 1
    assert f"validation @ step {STEPS}: loss=" in result.stdout and "bleu=" in result.stdout
    assert last_line(result.stderr) == (f"error: cannot write the results to {copy}/eval/validation-{STEPS}-"
                                        f"{DECODING}-first8.json/.tsv: File exists")


@pytest.mark.parametrize("where, message", [("file", "exists and is not a folder"),
                                            ("file/run", "cannot create it (Not a directory)")])
def test_a_workdir_that_cannot_be_one_fails_in_one_line(tmp_path, where, message):
    (tmp_path / "file").write_text("")
    result = launch(*smoke_args(tmp_path / where, tmp_path / "data"))
    assert result.returncode == 1
    assert last_line(result.stderr) == f"error: --workdir={tmp_path / where}: {message}"


# --- prediction input -------------------------------------------------------------------


def texts_of_length(tok, lengths):
    """A text of each token count (EOS included)."""
    found = {}
    for n in range(60, 130):
        for tail in ("", " Amen", " Jesus wept."):
            text = "1 " * n + tail
            found.setdefault(len(tok.encode(text)), text)
    return [found[length] for length in lengths]


def test_an_overlong_line_is_cut_to_the_models_limit_with_a_warning_and_the_others_answered(trained):
    workdir, data_dir, _ = trained
    # The smoke model: max_len 256, extra_len 10, sources padded to multiples of EVAL_LENGTH_MULTIPLE.
    limit = (256 - 10) // pipeline.EVAL_LENGTH_MULTIPLE * pipeline.EVAL_LENGTH_MULTIPLE
    fits, too_long = texts_of_length(tokenizer.load_tokenizer(str(workdir / "tokenizer.model")), [limit, limit + 1])
    result = launch(*smoke_args(workdir, data_dir), "--mode=predict", stdin=f"Jesus wept.\n{fits}\n\n{too_long}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    answers = result.stdout.split("\n")
    assert len(answers) == 5 and answers[2] == "" and all(answers[i] for i in (0, 1, 3))
    warnings = [line for line in result.stderr.splitlines() if "more than the" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"input line 4: {limit + 1} tokens, more than the {limit} this model translates (config.model.max_len=256, "
        f"config.decode.extra_len=10); translating its first {limit - 1}")


# --- derived config values and result names ---------------------------------------------


def test_a_sweep_finds_the_final_evaluation_its_runs_write(trained, tmp_path):
    workdir, data_dir, _ = trained
    config = experiment_config("translate_bible", "smoke")
    overrides = {"total_steps": STEPS, "decode.final_examples": 8}
    config.update_from_flattened_dict(overrides)
    planned = sweep.plan(config, "experiments/translate_bible.py:smoke", str(tmp_path), overrides, "launch.py")
    assert {os.path.basename(run.final_eval) for run in planned.runs} == {f"test-{STEPS}-{DECODING}-first8.json"}
    assert (workdir / "eval" / os.path.basename(planned.runs[0].final_eval)).exists()


def prefix_translator(task, encoded_sources, encoded_targets):
    """A stand-in for the task's compiled search (called, or lowered and compiled ahead):
    each source's output is the first half of its own reference, so that BLEU is neither 0
    nor 100 and a mix-up of rows shows."""
    table = {tuple(s): np.append(t[: len(t) // 2], tokenizer.EOS_ID) for s, t in zip(encoded_sources, encoded_targets)}

    def translate(params, inputs, alpha, beam_size, cached=True):
        rows = np.asarray(jax.device_get(inputs))
        out = np.zeros((len(rows), rows.shape[1] + task.config.decode.extra_len), np.int32)
        for r, row in enumerate(rows):
            if row.any():
                ids = table[tuple(row[row > 0])]
                out[r, : len(ids)] = ids
        return out

    translate.lower = lambda *args, **kwargs: types.SimpleNamespace(compile=lambda: None)
    return translate, table


def test_bleu_is_sacrebleu_of_the_tsv_each_hypothesis_beside_its_source(tfds_dir, tmp_path):
    """English→Korean, the pair overridden after the config file was read (as
    `--config.data.pair=en-ko` does): its character coverage and BLEU tokenization follow it."""
    config = experiment_config("translate_bible", "smoke")
    config.data.data_dir, config.data.pair, config.decode.final_examples = str(tfds_dir), "en-ko", 300
    config.decode.alpha = 0.6  # fixed: no search over it
    task = TranslationTask(config, str(tmp_path), sharding.make_mesh(devices=jax.devices()[:1]))
    tokenize = "char"
    assert (config.data.character_coverage, config.decode.bleu_tokenize) == (0.9995, tokenize)
    sources, targets = task.encoded("test")
    task._translate, table = prefix_translator(task, sources, targets)
    params = task.init_params(jax.random.key(0))
    metrics, rows = task.evaluate(params, "test", 0, full=True)
    stem = evaluate.write_eval(str(tmp_path), "test", 0, "test", "0", metrics, rows)

    with open(stem + ".tsv", encoding="utf-8", newline="") as f:
        tsv = list(csv.reader(f, delimiter="\t"))[1:]
    source_texts, reference_texts = task.texts("test")
    assert [row[:2] for row in tsv] == [[s, r] for s, r in zip(source_texts, reference_texts)][:300]
    assert [row[2] for row in tsv] == [task.tokenizer.decode(table[tuple(s)]) for s in sources[:300]]
    hypotheses, references = [row[2] for row in tsv], [row[1] for row in tsv]
    recomputed = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score
    assert json.loads(pathlib.Path(stem + ".json").read_text())["bleu"] == pytest.approx(recomputed, abs=1e-9)
    words = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="13a").score
    assert 5 < recomputed < 95 and abs(recomputed - words) > 1  # the tokenization matters
