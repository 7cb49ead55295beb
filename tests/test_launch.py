"""`launch.py` end to end on the translation smoke config, through the real TFDS
builder: the run contract's train, eval, predict and attention modes, and one-line errors
for bad input."""

import csv
import json
import os

import pytest
from conftest import launch, launch_processes
from PIL import Image

from ml_transformer.data import tokenizer

STEPS = 6


def smoke_args(workdir, data_dir):
    return [
        "--config=experiments/translate_bible.py:smoke", f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}", f"--config.total_steps={STEPS}",
        "--config.checkpoint_every_steps=3", "--config.eval_every_steps=3", "--config.decode.final_examples=8",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir, data_dir = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("data")
    result = launch(*smoke_args(workdir, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, data_dir, result


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
    metrics = json.loads((workdir / "eval" / "test-6.json").read_text())
    assert metrics["step"] == 6 and "bleu" in metrics and metrics["bleu_examples"] == 8
    rows = list(csv.reader((workdir / "eval" / "test-6.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert rows[0] == ["source", "reference", "hypothesis"] and len(rows) == 9


def test_the_tokenizer_gives_every_character_of_the_corpus_a_piece(trained):
    tok = tokenizer.load_tokenizer(str(trained[0] / tokenizer.TOKENIZER_FILE))
    text = "Israël plaça 12 pains (sûrs) sur l'autel de Dieu."
    assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text


def test_rerun_after_the_last_step_resumes_without_training(trained):
    workdir, data_dir, _ = trained
    result = launch(*smoke_args(workdir, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == STEPS


def test_two_single_device_processes_train_and_translate_as_one(trained, tmp_path):
    """Each process reads half of every batch (the same batches as one device: the batch
    sizes are even); process 0 gathers the translations and alone reports."""
    workdir, data_dir, _ = trained
    outputs = launch_processes(tmp_path, *smoke_args(tmp_path, data_dir), "--config.mesh.data=2", count=2, devices=1)
    assert "test @ step 6" in outputs[0] and "test @ step" not in outputs[1]
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (workdir, tmp_path)]
    assert [sorted(r) for r in records[0]] == [sorted(r) for r in records[1]]
    for one, two in zip(*records):
        for key in one.keys() - {"train/tokens_per_second"}:
            assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert (tmp_path / "eval" / "test-6.tsv").read_text() == (workdir / "eval" / "test-6.tsv").read_text()


def test_eval_mode_restores_a_checkpoint(trained):
    workdir, data_dir, _ = trained
    result = launch(*smoke_args(workdir, data_dir), "--mode=eval", "--checkpoint=3", "--split=validation")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((workdir / "eval" / "validation-3.json").read_text())
    assert metrics["split"] == "validation" and metrics["step"] == 3
    assert (workdir / "eval" / "validation-3.tsv").exists()


def test_eval_of_every_checkpoint_writes_one_table(trained):
    workdir, data_dir, _ = trained
    result = launch(*smoke_args(workdir, data_dir), "--mode=eval", "--checkpoint=all", "--split=validation",
                    "--config.decode.final_examples=4")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (workdir / "eval" / "validation-all.md").read_text().splitlines()
    assert table[0].startswith("| checkpoint | step | loss |") and "bleu" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["3", "6", "best"]
    assert len(os.listdir(workdir / "checkpoints" / "best")) == 1


def test_predict_mode_answers_each_line_in_order(trained):
    workdir, data_dir, _ = trained
    lines = "In the beginning God created the heavens and the earth.\nJesus wept.\n\nAmen.\n"
    result = launch(*smoke_args(workdir, data_dir), "--mode=predict", stdin=lines)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.split("\n")) - 1 == 4  # one output line per input line


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
    ],
)
def test_bad_input_fails_with_one_line_naming_it(trained, args, culprit):
    workdir, data_dir, _ = trained
    before = sorted(os.listdir(workdir / "checkpoints"))
    result = launch(*smoke_args(workdir, data_dir), *args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and culprit in last, result.stderr[-2000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == before  # nothing saved is lost


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
