"""Marian and Pegasus checkpoints ↔ the translation model: a tiny random MarianMTModel with
its MarianTokenizer (golden outputs of transformers, `tests/hf_fixtures/make_fixtures.py`),
and exports of tiny random models of ours."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers
from conftest import HF_FIXTURES

from ml_transformer import interop
from ml_transformer.data.tokenizer import train_tokenizer
from ml_transformer.interop import folder, marian, tensors
from ml_transformer.models.seq2seq import Seq2Seq
from ml_transformer.tasks import translation

MARIAN = os.path.join(HF_FIXTURES, "marian")
GOLDEN = dict(np.load(os.path.join(MARIAN, "golden.npz")))
RUN = dict(dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32", attention_impl="")  # the experiment's
# our translate_bible model, tiny: pre-LN, interleaved sinusoidal table, ReLU, scaled embeddings, eps 1e-6
OURS = dict(d_model=16, num_heads=2, d_ff=24, num_encoder_layers=2, num_decoder_layers=2, max_len=32, pre_ln=True,
            position="sinusoidal", share_embeddings=True, tie_output=True, bos_id=2)
SENTENCES = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void.",
             "And God said, Let there be light: and there was light.", "And God saw the light, that it was good."]


def seq2seq(fields: dict) -> Seq2Seq:
    """The translation task's model of `config.model` fields `fields`."""
    config = ml_collections.ConfigDict({"model": {**RUN, **fields}})
    return Seq2Seq(translation.model_config(config, fields["vocab_size"], fields["bos_id"]))


def shapes(model: Seq2Seq) -> dict[str, tuple]:
    x = jnp.ones((1, 4), jnp.int32)
    return {k: v.shape for k, v in tensors.flat(jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]).items()}


def imported(path: str):
    """(checkpoint, our model of it, its flat parameters); the tensors left out are the
    fixed position tables that Pegasus saves, if any."""
    checkpoint = interop.open_checkpoint(path)
    model = seq2seq(checkpoint.fields)
    params, left_out = interop.load_params(checkpoint, shapes(model))
    tables = [f"model.{side}.embed_positions.weight" for side in ("decoder", "encoder")]
    assert left_out == (tables if checkpoint.fields["pre_ln"] else [])
    return checkpoint, model, params


@functools.cache
def imported_marian():
    return imported(MARIAN)


def logits(model, params, inputs, targets) -> np.ndarray:
    return np.asarray(model.apply({"params": tensors.nested(params)}, jnp.asarray(inputs), jnp.asarray(targets)))


def random_model(seed: int = 0, vocab_size: int = 40, **fields):
    """(fields, model, flat parameters drawn at random, LayerNorms included)."""
    fields = {**OURS, "vocab_size": vocab_size, **fields}
    model = seq2seq(fields)
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(1.0 if k.endswith("scale") else 0.0, 0.3, s).astype(np.float32)
              for k, s in shapes(model).items()}
    return fields, model, params


def batch(seed: int = 1, vocab_size: int = 40):
    """Source and target ids [3, 7] with padding (targets end with our EOS 3)."""
    rng = np.random.default_rng(seed)
    inputs, targets = rng.integers(4, vocab_size, (3, 7)), rng.integers(4, vocab_size, (3, 7))
    inputs[0, 4:], targets[1, 3:] = 0, 0
    targets[1, 2] = 3
    return inputs, targets


def test_marian_logits_equal_transformers_with_padding():
    checkpoint, model, params = imported_marian()
    size = checkpoint.fields["vocab_size"]
    assert {k: checkpoint.fields[k] for k in ("bos_id", "eos_id", "shifted_vocab", "pre_ln", "position")} == dict(
        bos_id=0, eos_id=1, shifted_vocab=True, pre_ln=False, position="sinusoidal_halves")
    ours = lambda ids: (ids + 1) % size  # noqa: E731  Marian's id i is our (i + 1) mod V; its pad our 0
    real = GOLDEN["decoder_attention_mask"].astype(bool)
    # our targets: the decoder inputs without the start token, then </s>; 0 at padding
    targets = np.concatenate([GOLDEN["decoder_input_ids"][:, 1:], np.zeros((3, 1), np.int32)], axis=1)
    targets[np.arange(3), real.sum(1) - 1] = 0  # Marian's </s>
    targets = ours(targets) * real
    inputs = ours(GOLDEN["input_ids"]) * GOLDEN["attention_mask"]
    got = logits(model, params, inputs, targets)
    want = np.roll(GOLDEN["logits"], 1, axis=-1)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_marian_greedy_through_translate_equals_transformers():
    checkpoint, model, params = imported_marian()
    size, tokenizer = checkpoint.fields["vocab_size"], marian.tokenizer(MARIAN)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (checkpoint.fields["bos_id"], checkpoint.fields["eos_id"]) == (0, 1)
    inputs = (GOLDEN["input_ids"] + 1) % size * GOLDEN["attention_mask"]
    out = translation.translate(model, tensors.nested(params), jnp.asarray(inputs), beam_size=1, alpha=0.0,
                                extra_len=8, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, min_len=0)
    want = (GOLDEN["greedy"][:, 1:] + 1) % size  # transformers' rows: its pad (the start token), then 8 tokens
    np.testing.assert_array_equal(np.asarray(out)[:, :want.shape[1]], want)


def test_translate_never_outputs_padding():
    """Marian's padding is a token of its vocabulary; our outputs hold it after EOS only."""
    checkpoint, model, params = imported_marian()
    bias = params["final_logits_bias"].copy()
    bias[0] += 100.0  # padding would be every step's argmax
    params = {**params, "final_logits_bias": bias}
    inputs = (GOLDEN["input_ids"] + 1) % checkpoint.fields["vocab_size"] * GOLDEN["attention_mask"]
    out = np.asarray(translation.translate(model, tensors.nested(params), jnp.asarray(inputs), beam_size=2,
                                           alpha=0.6, extra_len=4, bos_id=0, eos_id=1))
    for row in out:
        end = list(row).index(1)
        assert (row[:end] != 0).all() and (row[end + 1:] == 0).all()


def test_marian_tokenizer_gives_transformers_ids_and_decodes_targets():
    tokenizer = marian.tokenizer(MARIAN)
    size = tokenizer.vocab_size
    for text, ids, mask in zip(GOLDEN["texts"], GOLDEN["input_ids"], GOLDEN["attention_mask"]):
        assert tokenizer.encode(str(text)) == [(i + 1) % size for i in ids[mask == 1]]
    for text, ids, mask in zip(GOLDEN["target_texts"], GOLDEN["decoder_input_ids"], GOLDEN["decoder_attention_mask"]):
        ours = [(i + 1) % size for i in ids[mask == 1]]  # the start token (our 0), the target's pieces
        assert tokenizer.decode(ours + [tokenizer.eos_id, 5, 6]) == str(text)
    assert tokenizer.pieces([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    # a leading language code is one piece (here unknown), as transformers makes it: [1, 5, 23, 0] in its ids
    assert tokenizer.encode(">>fr<< The cat") == [tokenizer.unk_id] + tokenizer.encode("The cat") == [2, 6, 24, 1]


def test_marian_export_then_import_gives_the_same_tensors_and_parameters(tmp_path):
    checkpoint, _, params = imported_marian()
    out = str(tmp_path / "marian")
    marian.export(checkpoint.fields, params, out)
    original, exported = folder.read_tensors(MARIAN), folder.read_tensors(out)
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = interop.open_checkpoint(out)
    assert again.fields == checkpoint.fields
    reloaded, _ = interop.load_params(again, {k: v.shape for k, v in params.items()})
    for name, value in params.items():
        np.testing.assert_array_equal(reloaded[name], value, err_msg=name)
    config, hf = folder.read_config(out), folder.read_config(MARIAN)
    for key in ("vocab_size", "d_model", "pad_token_id", "eos_token_id", "decoder_start_token_id", "scale_embedding",
                "activation_function", "max_position_embeddings", "share_encoder_decoder_embeddings"):
        assert config[key] == hf[key] or (key, config[key], hf[key]) == ("activation_function", "silu", "swish"), key


@pytest.mark.parametrize("pre_ln, architecture", [(True, "PegasusForConditionalGeneration"),
                                                  (False, "MarianMTModel")])
def test_export_of_our_interleaved_table_permutes_the_residual_stream(tmp_path, pre_ln, architecture):
    """Our model with the interleaved sinusoidal table, exported and imported again with
    Marian's table, computes the same logits."""
    fields, model, params = random_model(pre_ln=pre_ln, layer_norm_epsilon=1e-5, final_logits_bias=True)
    out = str(tmp_path / "export")
    marian.export(fields, params, out)
    again = interop.open_checkpoint(out)
    assert again.architecture == architecture
    assert {k: again.fields[k] for k in ("position", "bos_id", "eos_id", "shifted_vocab", "pre_ln")} == dict(
        position="sinusoidal_halves", bos_id=2, eos_id=3, shifted_vocab=False, pre_ln=pre_ln)
    _, model_again, params_again = imported(out)
    inputs, targets = batch()
    want, got = logits(model, params, inputs, targets), logits(model_again, params_again, inputs, targets)
    real = targets > 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)
    assert np.abs(params_again["source_embedding/embedding"] - params["source_embedding/embedding"]).max() > 0.1


def test_pegasus_export_of_our_default_epsilon_changes_the_logits_little(tmp_path):
    """transformers' LayerNorm epsilon is 1e-5, ours 1e-6 by default."""
    fields, model, params = random_model(seed=3)
    marian.export(fields, params, str(tmp_path))
    _, model_again, params_again = imported(str(tmp_path))
    inputs, targets = batch()
    want, got = logits(model, params, inputs, targets), logits(model_again, params_again, inputs, targets)
    real = targets > 0
    assert np.abs(got[real] - want[real]).max() < 1e-4


def test_our_tokenizer_exported_as_a_marian_tokenizer_tokenizes_as_ours(tmp_path):
    ours = train_tokenizer(SENTENCES * 4, str(tmp_path / "spm.model"), 40, character_coverage=1.0)
    fields, _, params = random_model()
    out = str(tmp_path / "export")
    marian.export(fields, params, out, tokenizer_file=str(tmp_path / "spm.model"))
    theirs = marian.tokenizer(out)
    texts = SENTENCES + ["Zebras! (unseen)"]
    assert theirs.encode_batch(texts) == ours.encode_batch(texts)
    assert (theirs.vocab_size, theirs.pad_id, theirs.unk_id, theirs.bos_id, theirs.eos_id) == (40, 0, 1, 2, 3)
    ids = ours.encode(SENTENCES[0])
    assert theirs.decode([2] + ids + [7]) == ours.decode([2] + ids + [7]) == SENTENCES[0]


@pytest.mark.parametrize("change, message", [
    (dict(position="learned"), "config.model.position='learned': Marian and Pegasus compute sinusoidal positions"),
    (dict(share_embeddings=False), "config.model.share_embeddings=False: Marian and Pegasus exports hold one"),
    (dict(tie_output=False), "config.model.tie_output=False: Marian and Pegasus exports hold one"),
])
def test_export_refuses_what_marian_and_pegasus_cannot_hold(tmp_path, change, message):
    fields, _, params = random_model()
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as error:
        marian.export({**fields, **change}, params, str(tmp_path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    (dict(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings=false is not supported"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings=false is not supported"),
    (dict(pad_token_id=5), "pad_token_id=5: only 0 or the last id"),
    (dict(decoder_attention_heads=2), "encoder_attention_heads=4 but decoder_attention_heads=2"),
    (dict(activation_function="tanh"), "activation_function='tanh' is not supported"),
])
def test_import_refuses_what_our_model_cannot_hold(change, message):
    hf = {**folder.read_config(MARIAN), **change}
    with pytest.raises(interop.CheckpointError, match=message) as error:
        marian.model_fields(hf, "hf:x")
    assert "\n" not in str(error.value)


def test_a_pegasus_tokenizer_json_starts_decoding_with_the_decoder_start(tmp_path):
    """A checkpoint without MarianTokenizer files (e.g. google/pegasus-*) has its
    tokenizer.json read by `tokenizers.load`; its bos is the model's decoder start, padding."""
    config = dict(architectures=["PegasusForConditionalGeneration"], model_type="pegasus", vocab_size=5, d_model=8,
                  encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=16, pad_token_id=0,
                  eos_token_id=1, decoder_start_token_id=0)
    folder.write(str(tmp_path), config, {})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "in": 3, "the": 4}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = marian.tokenizer(str(tmp_path))
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.encode("in the beginning")) == (0, 0, 1, [3, 4, 2, 1])
