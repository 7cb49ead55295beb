"""Hugging Face checkpoints: the shared reading and checks, BERT-family encoders (a tiny
random BERT and the real all-MiniLM-L6-v2) and their use through launch.py.

Golden outputs come from transformers + PyTorch (`tests/hf_fixtures/make_fixtures.py`).
"""

import json
import os
import shutil
import string
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from conftest import DECODING, HF_FIXTURES, STEPS, assert_tensors_refused, experiment_config, launch, smoke_args
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from safetensors.numpy import load_file

from ml_transformer import interop
from ml_transformer.interop import bert, folder, tensors
from ml_transformer.models import text_classifier
from ml_transformer.train import restore

BERT = os.path.join(HF_FIXTURES, "bert")


def classifier_for(path: str):
    """(the checkpoint, the text classifier of the textcls_bible experiment made its
    architecture with a mean-pooling head, that model's parameter shapes)."""
    config = experiment_config("textcls_bible", "smoke")
    checkpoint = interop.open_checkpoint(path)
    interop.apply_to_config(config, checkpoint)
    config.model.pool = "mean"
    model = text_classifier.from_config(config.model, 2)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return checkpoint, model, {k: v.shape for k, v in tensors.flat(abstract).items()}


def imported_classifier(path: str):
    """(the model of `classifier_for`, its parameters from the checkpoint with a zero head,
    the tensors left out)."""
    checkpoint, model, shapes = classifier_for(path)
    params, left_out = interop.load_params(checkpoint, shapes)
    assert sorted(set(shapes) - set(params)) == ["head/bias", "head/kernel"]
    params.update({k: np.zeros(shapes[k], np.float32) for k in ("head/bias", "head/kernel")})
    return model, tensors.nested(params), left_out


def test_bert_outputs_equal_transformers_with_padding():
    model, params, left_out = imported_classifier(BERT)
    assert left_out == ["pooler.dense.bias", "pooler.dense.weight"]
    golden = np.load(os.path.join(BERT, "golden.npz"))
    mask = golden["attention_mask"].astype(bool)
    ids = jnp.asarray(golden["input_ids"] * mask)
    encoded = np.asarray(model.apply({"params": params}, ids, method="encoded"))
    np.testing.assert_allclose(encoded[mask], golden["last_hidden_state"][mask], atol=1e-4, rtol=0)
    assert not np.allclose(encoded[mask], 0, atol=1e-2)


def test_bert_export_then_import_gives_the_same_parameters(tmp_path):
    checkpoint, _, shapes = classifier_for(BERT)
    params, _ = interop.load_params(checkpoint, shapes)
    folder.write(str(tmp_path), bert.hf_config(checkpoint.fields), tensors.to_theirs(bert.rules(checkpoint.fields), params))
    again, _ = interop.load_params(interop.open_checkpoint(str(tmp_path)), shapes)
    assert again.keys() == params.keys()
    assert all(np.array_equal(again[k], params[k]) for k in params)
    original, written = (load_file(os.path.join(p, folder.WEIGHTS)) for p in (BERT, tmp_path))
    assert written.keys() == original.keys() - {"pooler.dense.bias", "pooler.dense.weight"}
    assert all(np.array_equal(written[name], original[name]) for name in written)


def minilm_folder() -> str:
    return experiment_config("textcls_bible", "minilm").init_from.removeprefix(interop.HF)


def test_minilm_sentence_embeddings_equal_transformers_and_its_tokenizer_the_same_ids():
    golden = np.load(os.path.join(HF_FIXTURES, "minilm.npz"))
    path = minilm_folder()
    tokenizer = interop.tokenizers.load(path)
    ids = np.zeros_like(golden["input_ids"])
    for row, encoded in enumerate(tokenizer.encode_batch(list(golden["sentences"]))):
        ids[row, :len(encoded)] = encoded
    np.testing.assert_array_equal(ids, golden["input_ids"] * golden["attention_mask"])

    model, params, _ = imported_classifier(path)
    embeddings = np.asarray(model.apply({"params": params}, jnp.asarray(ids), method="pooled"))
    np.testing.assert_allclose(embeddings, golden["embeddings"], atol=1e-4, rtol=0)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    # Sentences 0-1 and 2-3 are paraphrases; every other pair is unrelated.
    for a, b in ((0, 1), (2, 3)):
        others = [similarity[a, j] for j in range(len(ids)) if j not in (a, b)]
        assert similarity[a, b] > 0.6 > max(others) + 0.3


KEY = "encoder.layer.1.attention.self.key.weight"


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop(KEY), ["missing tensor", KEY]),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), ["unexpected tensor 'extra'", "(3,)"]),
    (lambda t: t.update({KEY: np.zeros((32, 31), np.float32)}), [KEY, "(32, 31)", "(32, 32)"]),
], ids=["missing", "unexpected", "shape"])
def test_tensors_that_do_not_fit(tmp_path, change, words):
    assert_tensors_refused(tmp_path, "bert", change, classifier_for(BERT)[2], words)


def test_bad_checkpoint_folders_fail_in_one_line_naming_the_culprit(tmp_path):
    not_checkpoint = tmp_path / "empty"
    not_checkpoint.mkdir()
    with pytest.raises(interop.CheckpointError, match="not a Hugging Face checkpoint"):
        interop.open_checkpoint(str(not_checkpoint))
    with pytest.raises(interop.CheckpointError, match="not a folder"):
        interop.open_checkpoint(str(tmp_path / "nowhere"))
    other = tmp_path / "t5"
    other.mkdir()
    (other / folder.CONFIG).write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(interop.CheckpointError, match="architecture T5ForConditionalGeneration is not supported"):
        interop.open_checkpoint(str(other))
    garbage = tmp_path / "garbage"
    shutil.copytree(BERT, garbage)
    (garbage / folder.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(interop.CheckpointError, match="not a readable safetensors file"):
        imported_classifier(str(garbage))


def _tiny_wordpiece(path) -> None:
    """A `tokenizer.json` for the BERT fixture's 99 ids: letters as word starts and
    continuations, digits and punctuation, BERT's special tokens and template."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
             *(f"##{c}" for c in string.ascii_lowercase), *string.digits, *".,;:!?'\"()-"]
    vocab = {w: i for i, w in enumerate(words + [f"[unused{i}]" for i in range(99 - len(words))])}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(os.path.join(path, "tokenizer.json"))


def test_init_from_fine_tunes_a_checkpoint_that_eval_refuses_for_lack_of_the_head(tmp_path, tfds_dir):
    pretrained = tmp_path / "tiny-bert"
    shutil.copytree(BERT, pretrained)
    _tiny_wordpiece(pretrained)
    result = launch("--config=experiments/textcls_bible.py:smoke", f"--workdir={tmp_path / 'run'}",
                    f"--config.data.data_dir={tfds_dir}", "--config.total_steps=4", "--config.eval_every_steps=4",
                    "--config.checkpoint_every_steps=4", f"--config.init_from=hf:{pretrained}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"hf:{pretrained}: loaded 37 parameters (20,352 values) of a BertModel; newly initialized: "
            "head/bias, head/kernel; left out: pooler.dense.bias, pooler.dense.weight") in result.stdout
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["data"]["tokenizer"] == f"hf:{pretrained}"
    assert saved["data"]["max_len"] == 32  # the model's max_len (64) did not change the data's

    _, _, shapes = classifier_for(str(pretrained))  # what --mode=eval --checkpoint=hf:... restores
    abstract = tensors.nested({k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()})
    with pytest.raises(ValueError) as failure:
        restore.pretrained_params(str(pretrained), abstract, None)
    assert str(failure.value) == (f"hf:{pretrained}: has no head/bias, head/kernel for this model "
                                  f"(to train them: --config.init_from=hf:{pretrained})")


def test_an_exported_translation_model_translates_through_hf_as_from_its_checkpoint(trained, tmp_path):
    workdir, data_dir, _ = trained
    exported = tmp_path / "exported"
    result = launch(*smoke_args(workdir, data_dir), "--mode=export", f"--output={exported}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((exported / folder.CONFIG).read_text())["architectures"] == ["PegasusForConditionalGeneration"]
    assert {"model.safetensors", "generation_config.json", "source.spm", "vocab.json"} <= set(os.listdir(exported))

    result = launch(*smoke_args(tmp_path / "run", data_dir), "--mode=eval", f"--checkpoint=hf:{exported}")
    assert result.returncode == 0, result.stderr[-3000:]
    original = workdir / "eval" / f"test-{STEPS}-{DECODING}-first8"
    imported = tmp_path / "run" / "eval" / f"test-hf-exported-{DECODING}-first8"
    assert (imported.with_suffix(".tsv").read_text(encoding="utf-8")
            == original.with_suffix(".tsv").read_text(encoding="utf-8"))
    metrics = [json.loads(path.with_suffix(".json").read_text()) for path in (original, imported)]
    for name in ("loss", "nll", "accuracy", "bleu"):
        assert metrics[1][name] == pytest.approx(metrics[0][name], rel=1e-5)


def test_the_suites_installation_pulls_no_pytorch():
    """Every distribution that `pip install -e '.[test]'` brings, followed through the
    installed packages' own requirements: torch is not among them (the interop reads
    checkpoints with safetensors and tokenizers alone)."""
    pulled, todo = set(), [("ml_transformer", "test")]
    while todo:
        name, extra = todo.pop()
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            wanted = canonicalize_name(requirement.name)
            if (requirement.marker is None or requirement.marker.evaluate({"extra": extra})) and wanted not in pulled:
                pulled.add(wanted)
                todo.append((wanted, ""))
    assert {"safetensors", "tokenizers", "jax", "flax"} <= pulled
    assert "torch" not in pulled
