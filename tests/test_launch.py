"""`launch.py` end to end on the translation smoke config, through the real TFDS
builder: the run contract's train, eval, predict and attention modes, and one-line errors
for bad input."""

import csv
import json
import os
import subprocess

import pytest
from conftest import DECODING, ROOT, STEPS, launch, launch_command, launch_processes, smoke_args
from PIL import Image

from ml_transformer.data import tokenizer


def files(workdir) -> dict:
    """Every file under `workdir` and its content, but the lock (which names its last holder)."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != "lock"}


def assert_same_run(workdir, other):
    """Two runs of the smoke config logged the same training metrics and final test metrics
    (within float32 rounding of another device layout) and translated the test sentences alike."""
    def train_records(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]

    records = train_records(workdir), train_records(other)
    assert [sorted(r) for r in records[0]] == [sorted(r) for r in records[1]]
    results = [json.loads((run / "eval" / f"test-{STEPS}-{DECODING}-first8.json").read_text())
               for run in (workdir, other)]
    for one, two in [*zip(*records), results]:
        assert one.keys() == two.keys()
        for key in one.keys() - {"train/tokens_per_second", "train/mfu"}:  # timings
            assert two[key] == (one[key] if isinstance(one[key], str) else pytest.approx(one[key], rel=1e-5)), key
    tsv = f"test-{STEPS}-{DECODING}-first8.tsv"
    assert (other / "eval" / tsv).read_text() == (workdir / "eval" / tsv).read_text()


def test_train_writes_the_run_contract_files(trained):
    workdir, _, result = trained
    assert "test @ step 6" in result.stdout and "bleu=" in result.stdout
    config = json.loads((workdir / "config.json").read_text())
    assert config["total_steps"] == STEPS and config["data"]["pair"] == "en-fr"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r for r in records)
    assert any("train/loss" in r for r in records) and any("eval/bleu" in r for r in records)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
    metrics = json.loads((workdir / "eval" / f"test-6-{DECODING}-first8.json").read_text())
    assert metrics["step"] == 6 and "bleu" in metrics and metrics["bleu_examples"] == 8
    rows = list(csv.reader((workdir / "eval" / f"test-6-{DECODING}-first8.tsv").open(encoding="utf-8"),
                           delimiter="\t"))
    assert rows[0] == ["source", "reference", "hypothesis"] and len(rows) == 9


def test_the_tokenizer_gives_every_character_of_the_corpus_a_piece(trained):
    tok = tokenizer.load_tokenizer(str(trained[0] / tokenizer.TOKENIZER_FILE))
    text = "Israël plaça 12 pains (sûrs) sur l'autel de Dieu."
    assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text


def test_rerun_after_the_last_step_resumes_without_training(trained):
    workdir, data_dir, _ = trained
    before = (workdir / "metrics.jsonl").read_text()
    result = launch(*smoke_args(workdir, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from the checkpoint at step {STEPS}" in result.stderr and "Training data" not in result.stderr
    assert (workdir / "metrics.jsonl").read_text() == before  # no step trained, nothing logged again


def test_two_processes_of_two_devices_with_sharded_parameters_train_and_translate_as_one(trained, tmp_path):
    """Bucketed batches, beam search and gathered translations over a 2 x 2 data x fsdp mesh
    of two processes: each reads half of every batch (the same batches as one device);
    process 0 gathers the translations and alone reports; the workdir is held once, by
    process 0."""
    workdir, data_dir, _ = trained
    outputs = launch_processes(tmp_path, *smoke_args(tmp_path, data_dir), "--config.mesh.data=2",
                               "--config.mesh.fsdp=2", "--config.eval_every_steps=1000", count=2, devices=2)
    assert "test @ step 6" in outputs[0] and "test @ step" not in outputs[1]
    assert_same_run(workdir, tmp_path)


def test_eval_mode_keeps_evaluations_with_other_decoding_settings_beside_each_other(trained):
    workdir, data_dir, _ = trained
    beam = (workdir / "eval" / f"test-{STEPS}-{DECODING}-first8.json").read_text()  # written by training
    result = launch(*smoke_args(workdir, data_dir), "--mode=eval", "--config.decode.beam_size=1")
    assert result.returncode == 0, result.stderr[-3000:]
    greedy = json.loads((workdir / "eval" / f"test-{STEPS}-greedy-max+10-min1-first8.json").read_text())
    assert greedy["split"] == "test" and greedy["step"] == STEPS and greedy["beam_size"] == 1
    assert (workdir / "eval" / f"test-{STEPS}-greedy-max+10-min1-first8.tsv").exists()
    assert (workdir / "eval" / f"test-{STEPS}-{DECODING}-first8.json").read_text() == beam


def test_eval_of_every_checkpoint_writes_one_table(trained):
    workdir, data_dir, _ = trained
    result = launch(*smoke_args(workdir, data_dir), "--mode=eval", "--checkpoint=all", "--split=validation",
                    "--config.decode.final_examples=4")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (workdir / "eval" / f"validation-all-{DECODING}-first4.md").read_text().splitlines()
    assert table[0].startswith("| checkpoint | step | loss |") and "bleu" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["3", "6", "best"]
    assert len(os.listdir(workdir / "checkpoints" / "best")) == 1


def test_predict_mode_answers_each_line_in_order(trained):
    workdir, data_dir, _ = trained
    lines = "In the beginning God created the heavens and the earth.\nJesus wept.\n\nAmen.\n"
    result = launch(*smoke_args(workdir, data_dir), "--mode=predict", stdin=lines)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = result.stdout.split("\n")
    assert len(answers) == 5 and answers[-1] == ""  # one output line per input line
    assert answers[2] == "" and all(answers[i] for i in (0, 1, 3))  # an empty line is answered with one


def test_attention_mode_draws_encoder_decoder_and_cross_attention(trained):
    workdir, data_dir, _ = trained
    sentence = "The animal didn't cross the street because it was too tired\n"
    result = launch(*smoke_args(workdir, data_dir), "--mode=attention", "--layer=0", "--head=1", stdin=sentence)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = result.stdout.split()
    assert [os.path.basename(p) for p in paths] == [
        "0-encoder-layers_0-self_attention-head-1.png",
        "0-decoder-layers_0-self_attention-head-1.png",
        "0-decoder-layers_0-cross_attention-head-1.png",
    ]
    assert all(os.path.dirname(p) == str(workdir / "attention" / str(STEPS)) for p in paths)
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
    result = launch(*smoke_args(workdir, data_dir), "--mode=attention", "--head=7", stdin=sentence)
    assert result.returncode != 0 and "--head=7" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--config.model.no_such_field=1"], "--config.model.no_such_field"),
        (["--config.model.d_model=big"], "--config.model.d_model"),
        (["--mode=eval", "--checkpoint=12345"], "--checkpoint=12345"),
        (["--mode=predict", "--input=/no/such/file.txt"], "--input=/no/such/file.txt"),
        (["--config.data.pair=en-xx"], "en-xx"),
        (["--config.model.d_ff=128"], "checkpoint shape (64,), model shape (128,)"),  # a refused resume
        (["--mode=predict"], "stdin line 2: not UTF-8 text (byte 0xeb at position 4)"),
        (["--mode=predict", "--input={tmp}/latin1.txt"], "latin1.txt line 2: not UTF-8 text"),
        (["--mode=attention"], "stdin: no input lines"),
        (["--mode=predict", "--input={tmp}/empty.txt"], "empty.txt: no input lines (all 2 are empty)"),
    ],
)
def test_bad_input_fails_with_one_line_naming_it(trained, args, culprit, tmp_path):
    workdir, data_dir, _ = trained
    latin1 = "Jesus wept.\nIsraël plaça".encode("latin-1")
    (tmp_path / "latin1.txt").write_bytes(latin1)
    (tmp_path / "empty.txt").write_text("\n \n")
    before = files(workdir)
    command = smoke_args(workdir, data_dir) + [arg.format(tmp=tmp_path) for arg in args]
    stdin = latin1 if args == ["--mode=predict"] else b""
    result = subprocess.run(launch_command(*command), input=stdin, capture_output=True, cwd=ROOT, timeout=600)
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error:") and culprit in last, result.stderr.decode()[-2000:]
    assert files(workdir) == before  # nothing in the workdir changed


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--config.model.num_heads=3"], "config.model.num_heads=3"),  # d_model 32
        (["--config.optimizer.learning_rate=-1"], "config.optimizer.learning_rate=-1"),
        (["--config.model.dropout_rate=1.5"], "config.model.dropout_rate=1.5"),
        (["--config.micro_batches=0"], "config.micro_batches=0"),
        (["--config.data.character_coverage=0"], "config.data.character_coverage=0"),
        (["--config.mesh.fsdp=3"], "config.mesh"),  # one device
        (["--profile_steps=5"], "--profile_steps=5"),
    ],
)
def test_a_config_that_cannot_work_fails_before_compiling_anything(tmp_path, args, culprit):
    result = launch(*smoke_args(tmp_path / "run", tmp_path / "data"), *args, env={"JAX_LOG_COMPILES": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and culprit in last, result.stderr[-2000:]
    assert "Compiling" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nor read any data


def test_unknown_config_argument_fails(tmp_path):
    result = launch("--config=experiments/translate_bible.py:en-xx", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "en-xx" in result.stderr
