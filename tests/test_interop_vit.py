"""Hugging Face ViT checkpoints (`interop.vit`): transformers' outputs on the golden
fixtures, export then import, and checkpoints or models that do not fit."""

import functools
import json
import os
import re

import jax
import numpy as np
import pytest
from conftest import HF_FIXTURES, assert_tensors_refused, changed_hf_fixture, experiment_config

from ml_transformer import interop
from ml_transformer.interop import folder, tensors, vit as hf_vit
from ml_transformer.interop.folder import CheckpointError
from ml_transformer.models import vit

NEW_CLASSES = 7  # of the new head on a ViTModel


def golden(name: str) -> dict:
    return dict(np.load(os.path.join(HF_FIXTURES, name, "golden.npz")))


def images(name: str) -> np.ndarray:
    return golden(name)["pixel_values"].transpose(0, 2, 3, 1)  # NCHW → NHWC


@functools.cache
def imported(name: str):
    """(the checkpoint, our ViT of the vit_digits experiment made that checkpoint's, its
    parameters: the checkpoint's, a new head where it has none, the tensors left out)."""
    checkpoint = interop.open_checkpoint(os.path.join(HF_FIXTURES, name))
    config = experiment_config("vit_digits", "smoke")
    interop.apply_to_config(config, checkpoint)
    model = vit.from_config(config.model, checkpoint.fields.get("num_classes", NEW_CLASSES))
    params = tensors.flat(model.init(jax.random.key(0), images(name)[:1])["params"])
    loaded, dropped = interop.load_params(checkpoint, {k: v.shape for k, v in params.items()})
    return checkpoint, model, {**params, **loaded}, dropped


def run(model, params, x):
    """(logits, the encoder's output = transformers' last_hidden_state)."""
    logits, state = model.apply({"params": tensors.nested(params)}, x, capture_intermediates=True)
    return np.asarray(logits), np.asarray(state["intermediates"]["encoder"]["__call__"][0])


@pytest.mark.parametrize("name", ["vit", "vit_model"])
def test_outputs_match_transformers(name):
    checkpoint, model, params, dropped = imported(name)
    want = golden(name)
    logits, hidden = run(model, params, images(name))
    assert np.abs(hidden - want["last_hidden_state"]).max() <= 1e-4
    if name == "vit":
        assert checkpoint.fields["num_classes"] == 5 and dropped == []
        assert np.abs(logits - want["logits"]).max() <= 1e-4
    else:  # the head is ours, the pooler left out
        assert "num_classes" not in checkpoint.fields and logits.shape == (3, NEW_CLASSES)
        assert dropped == ["pooler.dense.bias", "pooler.dense.weight"]


@pytest.mark.parametrize("name", ["vit", "vit_model"])
def test_export_then_import_is_exact(name, tmp_path):
    checkpoint, _, params, _ = imported(name)
    hf_vit.export(checkpoint.fields, params, str(tmp_path))
    written = folder.read_tensors(str(tmp_path))
    if name == "vit":  # the very tensors of the checkpoint
        original = folder.read_tensors(checkpoint.path)
        assert set(written) == set(original)
        assert all(np.array_equal(written[k], original[k]) for k in original)
    again = interop.open_checkpoint(str(tmp_path))
    assert again.architecture == "ViTForImageClassification"
    assert again.fields == {**checkpoint.fields, "num_classes": params["head/kernel"].shape[1]}
    loaded, dropped = interop.load_params(again, {k: v.shape for k, v in params.items()})
    assert dropped == [] and set(loaded) == set(params)
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_default_experiment_exports_as_tanh_gelu(tmp_path):
    """vit_digits (no activation, epsilon or image size given: the defaults) → a
    ViTForImageClassification with gelu_pytorch_tanh and 1e-6, read back the same."""
    config = experiment_config("vit_digits", "smoke")
    model = vit.from_config(config.model, 10)
    x = np.zeros((1, 8, 8, 1), np.float32)
    params = tensors.flat(model.init(jax.random.key(1), x)["params"])
    hf_vit.export(config.model.to_dict(), params, str(tmp_path))
    written = json.loads((tmp_path / folder.CONFIG).read_text())
    assert written["architectures"] == ["ViTForImageClassification"]
    assert (written["hidden_act"], written["layer_norm_eps"], written["num_channels"]) == ("gelu_pytorch_tanh", 1e-6, 1)
    assert (written["image_size"], written["patch_size"], len(written["id2label"])) == (8, 2, 10)
    checkpoint = interop.open_checkpoint(str(tmp_path))
    assert (checkpoint.fields["activation"], checkpoint.fields["layer_norm_epsilon"]) == ("gelu", 1e-6)
    loaded, _ = interop.load_params(checkpoint, {k: v.shape for k, v in params.items()})
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_mean_pooling_is_not_exported(tmp_path):
    _, _, params, _ = imported("vit")
    with pytest.raises(ValueError, match=r"^config.model.pool='gap': .*class token[^\n]*$"):
        hf_vit.export({**imported("vit")[0].fields, "pool": "gap"}, params, str(tmp_path))


QUERY = "encoder.layer.1.attention.attention.query.weight"  # in messages: without the prefix "vit."


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop(f"vit.{QUERY}"), ["missing tensor", QUERY]),
    (lambda t: t.update({"vit.encoder.layer.2.output.dense.bias": np.zeros(32, np.float32)}),
     ["unexpected tensor", "encoder.layer.2.output.dense.bias", "(32,)"]),
    (lambda t: t.update({f"vit.{QUERY}": np.zeros((32, 16), np.float32)}), [QUERY, "(32, 16)", "(32, 32)"]),
], ids=["missing", "unexpected", "shape"])
def test_tensors_that_do_not_fit(tmp_path, change, words):
    assert_tensors_refused(tmp_path, "vit", change, {k: v.shape for k, v in imported("vit")[2].items()}, words)


@pytest.mark.parametrize("key, value, words", [
    ("qkv_bias", False, "qkv_bias=False"), ("image_size", [32, 16], "image_size=[32, 16]"),
    ("hidden_act", "gelu_fast", "hidden_act='gelu_fast'"),
])
def test_configs_we_cannot_hold(tmp_path, key, value, words):
    path = changed_hf_fixture(tmp_path, "vit", change_config=lambda c: c.update({key: value}))
    with pytest.raises(CheckpointError, match=r"^[^\n]*" + r"[^\n]*".join(map(re.escape, [path, words])) + r"[^\n]*$"):
        interop.open_checkpoint(path)
