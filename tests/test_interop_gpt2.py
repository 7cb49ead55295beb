"""Hugging Face GPT-2 checkpoints (`interop.gpt2`): transformers' logits on the golden
fixture (right- and left-padded), export then import, the √d embedding scale folded into
an export, and checkpoints or models that do not fit."""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_FIXTURES, assert_tensors_refused, changed_hf_fixture, experiment_config

from ml_transformer import interop
from ml_transformer.interop import folder, gpt2, tensors
from ml_transformer.interop.folder import CheckpointError
from ml_transformer.tasks.language_model import decoder_only

PATH = os.path.join(HF_FIXTURES, "gpt2")
GOLDEN = dict(np.load(os.path.join(PATH, "golden.npz")))


def model_of(fields: dict):
    """Our model of the lm_bible experiment with `fields` as its config.model's."""
    config = experiment_config("lm_bible", "smoke")
    with config.unlocked():
        config.model.update(fields)
    return decoder_only(config, fields["vocab_size"])


@functools.cache
def imported():
    """(the fixture's checkpoint, our model, its parameters)."""
    checkpoint = interop.open_checkpoint(PATH)
    model = model_of(checkpoint.fields)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    params, dropped = interop.load_params(checkpoint, {k: v.shape for k, v in tensors.flat(shapes).items()})
    assert dropped == []
    return checkpoint, model, params


def ours(prefix: str = "") -> np.ndarray:
    """The golden inputs in our ids: theirs + 1, padding 0."""
    return np.where(GOLDEN[f"{prefix}attention_mask"] > 0, GOLDEN[f"{prefix}input_ids"] + 1, 0)


@functools.cache
def logits_of(model):
    return jax.jit(lambda params, tokens: model.apply({"params": tensors.nested(params)}, tokens))


def real_difference(logits, want, prefix: str = "") -> float:
    """max |difference| at real tokens, our logit i + 1 against their i (our 0 is padding)."""
    return float(np.abs(np.asarray(logits)[..., 1:] - want)[GOLDEN[f"{prefix}attention_mask"] > 0].max())


@pytest.mark.parametrize("prefix", ["", "left_"], ids=["right-padded", "left-padded"])
def test_logits_match_transformers(prefix):
    """Left-padded, transformers is given position_ids that count real tokens: ours do."""
    checkpoint, model, params = imported()
    assert checkpoint.fields["vocab_size"] == 100 and checkpoint.fields["activation"] == "gelu"
    assert real_difference(logits_of(model)(params, ours(prefix)), GOLDEN[f"{prefix}logits"], prefix) <= 1e-4


def test_export_then_import_is_exact(tmp_path):
    checkpoint, _, params = imported()
    gpt2.export(checkpoint.fields, params, str(tmp_path))
    written, original = folder.read_tensors(str(tmp_path)), folder.read_tensors(PATH)
    assert set(written) == set(original)
    assert all(np.array_equal(written[k], original[k]) for k in original)
    again = interop.open_checkpoint(str(tmp_path))
    assert again.fields == checkpoint.fields
    loaded, _ = interop.load_params(again, {k: v.shape for k, v in params.items()})
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_embedding_scale_is_folded_into_the_export(tmp_path):
    """Our default LM (token embeddings times √d) → GPT-2 (E' = √d·E, final LayerNorm / √d):
    the same logits from the GPT-2-style model read back."""
    checkpoint, _, params = imported()
    scaled = {**checkpoint.fields, "scale_embeddings": True}
    want = logits_of(model_of(scaled))(params, ours())
    gpt2.export(scaled, params, str(tmp_path))
    again = interop.open_checkpoint(str(tmp_path))
    assert again.fields == checkpoint.fields  # scale_embeddings=False
    loaded, _ = interop.load_params(again, {k: v.shape for k, v in params.items()})
    assert not np.array_equal(loaded["embedding/embedding"], params["embedding/embedding"])
    assert real_difference(logits_of(imported()[1])(loaded, ours()), np.asarray(want)[..., 1:]) <= 1e-4


@pytest.mark.parametrize("fields, words", [
    ({"pre_ln": False}, "config.model.pre_ln=False"),
    ({"position": "sinusoidal"}, "config.model.position='sinusoidal'"),
])
def test_models_gpt2_cannot_hold(tmp_path, fields, words):
    checkpoint, _, params = imported()
    with pytest.raises(ValueError, match=rf"^{re.escape(words)}[^\n]*$"):
        gpt2.export({**checkpoint.fields, **fields}, params, str(tmp_path))


def test_buffers_and_tied_output_are_left_out(tmp_path):
    """Older checkpoints hold the attention buffers; some the tied output projection."""
    found = folder.read_tensors(PATH)
    extra = {"transformer.h.0.attn.bias": np.tril(np.ones((1, 1, 64, 64), np.float32)),
             "transformer.h.1.attn.masked_bias": np.array(-1e4, np.float32),
             "lm_head.weight": found["transformer.wte.weight"]}
    checkpoint = interop.open_checkpoint(changed_hf_fixture(tmp_path, "gpt2", change_tensors=lambda t: t.update(extra)))
    _, _, params = imported()
    loaded, dropped = interop.load_params(checkpoint, {k: v.shape for k, v in params.items()})
    assert dropped == ["h.0.attn.bias", "h.1.attn.masked_bias", "lm_head.weight"]
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


C_ATTN = "h.1.attn.c_attn.weight"  # in messages: without the prefix "transformer."


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop(f"transformer.{C_ATTN}"), ["missing tensor", C_ATTN]),
    (lambda t: t.update({"transformer.h.1.attn.c_attn.scale": np.ones(96, np.float32)}),
     ["unexpected tensor", "h.1.attn.c_attn.scale", "(96,)"]),
    (lambda t: t.update({f"transformer.{C_ATTN}": np.zeros((32, 64), np.float32)}), [C_ATTN, "(32, 64)", "(32, 96)"]),
], ids=["missing", "unexpected", "shape"])
def test_tensors_that_do_not_fit(tmp_path, change, words):
    assert_tensors_refused(tmp_path, "gpt2", change, {k: v.shape for k, v in imported()[2].items()}, words)


@pytest.mark.parametrize("key, value", [
    ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True), ("scale_attn_weights", False),
    ("tie_word_embeddings", False), ("activation_function", "gelu_fast"),
])
def test_configs_we_cannot_hold(tmp_path, key, value):
    path = changed_hf_fixture(tmp_path, "gpt2", change_config=lambda c: c.update({key: value}))
    with pytest.raises(CheckpointError, match=rf"^hf:{re.escape(path)}[^\n]*{key}=[^\n]*$"):
        interop.open_checkpoint(path)
