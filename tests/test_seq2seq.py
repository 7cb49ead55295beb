"""The encoder-decoder model: causality, padding, positions, cached decoding, bfloat16."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_transformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from ml_transformer.nn.blocks import BlockConfig, Encoder
from ml_transformer.nn.embeddings import sinusoidal_encoding
from ml_transformer.decode import beam_search
from ml_transformer.tasks.translation import cached_decoding, uncached_decoding

VOCAB = 40
BLOCK = BlockConfig(d_model=16, num_heads=2, d_ff=32, dropout_rate=0.0)


@functools.lru_cache(maxsize=None)
def model_and_params(pre_ln: bool):
    config = Seq2SeqConfig(VOCAB, BLOCK.__class__(**{**BLOCK.__dict__, "pre_ln": pre_ln}), 2, 2, max_len=32)
    model = Seq2Seq(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 6), jnp.int32), jnp.ones((1, 5), jnp.int32))
    return model, params, jax.jit(model.apply)


def tokens(rng, shape):
    return jnp.asarray(rng.integers(4, VOCAB, size=shape), jnp.int32)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_future_targets_do_not_change_earlier_outputs(pre_ln):
    model, params, apply = model_and_params(pre_ln)
    rng = np.random.default_rng(0)
    src, tgt = tokens(rng, (2, 6)), tokens(rng, (2, 5))
    base = apply(params, src, tgt)
    for t in range(5):
        changed = tgt.at[:, t].set((tgt[:, t] + 1 - 4) % (VOCAB - 4) + 4)
        out = apply(params, src, changed)
        # Decoder input position i sees targets < i, so logits up to t are unchanged.
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        if t < 4:
            assert np.abs(np.asarray(out[:, t + 1 :] - base[:, t + 1 :])).max() > 1e-4


def test_padding_never_changes_real_positions():
    model, params, apply = model_and_params(False)
    rng = np.random.default_rng(1)
    src, tgt = tokens(rng, (2, 6)), tokens(rng, (2, 5))
    src = src.at[0, 4:].set(0)
    tgt = tgt.at[1, 3:].set(0)
    base = apply(params, src, tgt)
    real_tgt = np.asarray(tgt > 0)
    # More source padding leaves the outputs at real target positions alone.
    src_more = jnp.concatenate([src, jnp.zeros((2, 3), jnp.int32)], axis=1)
    out = apply(params, src_more, tgt)
    np.testing.assert_allclose(np.asarray(out)[real_tgt], np.asarray(base)[real_tgt], atol=1e-5)
    tgt_more = jnp.concatenate([tgt, jnp.zeros((2, 2), jnp.int32)], axis=1)
    out = apply(params, src, tgt_more)[:, :5]
    np.testing.assert_allclose(np.asarray(out)[real_tgt], np.asarray(base)[real_tgt], atol=1e-5)
    # Rows are independent: shortening row 1's source changes nothing in row 0.
    src_b = src.at[1, 5].set(0)
    np.testing.assert_allclose(apply(params, src_b, tgt)[0], base[0], atol=1e-5)


@pytest.mark.parametrize("position", ["none", "sinusoidal"])
def test_encoder_permutation_equivariance_depends_on_positions(position):
    config = Seq2SeqConfig(VOCAB, BLOCK, 2, 1, max_len=32, position=position)
    model = Seq2Seq(config)
    rng = np.random.default_rng(2)
    src = tokens(rng, (1, 7))
    params = model.init(jax.random.key(0), src, src[:, :2])
    perm = rng.permutation(7)
    encode = lambda s: np.asarray(model.apply(params, s, method=Seq2Seq.encode))  # noqa: E731
    out, out_perm = encode(src), encode(src[:, perm])
    if position == "none":
        np.testing.assert_allclose(out_perm, out[:, perm], atol=1e-5)
    else:
        assert np.abs(out_perm - out[:, perm]).max() > 1e-3


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_encoding(50, 8)
    for pos, i in [(0, 0), (3, 1), (17, 2), (49, 3)]:
        angle = pos / 10000 ** (2 * i / 8)
        assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_cached_decoding_equals_full_forward(pre_ln):
    model, params, apply = model_and_params(pre_ln)
    rng = np.random.default_rng(3)
    src, tgt = tokens(rng, (3, 6)), tokens(rng, (3, 5))
    src = src.at[1, 3:].set(0)
    full = apply(params, src, tgt)
    memory, cache = model.apply(params, src, 5, method=Seq2Seq.start_decoding)
    step = jax.jit(functools.partial(model.apply, method=Seq2Seq.decode_step))
    previous = jnp.concatenate([jnp.full((3, 1), model.config.bos_id), tgt[:, :-1]], axis=1)
    for t in range(5):
        logits, cache = step(params, previous[:, t : t + 1], cache, memory)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-4)


def test_beams_sharing_one_cache_find_what_recomputing_each_prefix_finds():
    """A random model's beams part ways and swap places often: every beam must read its
    own ancestors' cached keys, wherever they were written."""
    model, params, _ = model_and_params(True)
    src = tokens(np.random.default_rng(5), (4, 6)).at[2, 4:].set(0)
    settings = dict(batch_size=4, beam_size=4, alpha=0.6, max_len=12, bos_id=2, eos_id=3, max_lens=jnp.sum(src > 0, 1) + 6,
                    min_len=8)  # long outputs (EOS forbidden before 8 tokens): many reorderings
    found = {}
    for decoding in (cached_decoding, uncached_decoding):
        step_fn, state, reorder = decoding(model, params, src, 12, 4)
        found[decoding] = jax.jit(lambda s: beam_search(step_fn, s, reorder=reorder, **settings))(state)
    (cached, cached_scores), (recomputed, recomputed_scores) = found.values()
    np.testing.assert_array_equal(cached, recomputed)
    np.testing.assert_allclose(cached_scores, recomputed_scores, rtol=1e-5)


def test_encoder_stack_dropout_only_in_training():
    encoder = Encoder(BlockConfig(d_model=16, num_heads=2, d_ff=32, dropout_rate=0.5), num_layers=1)
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    params = encoder.init(jax.random.key(1), x, None, train=False)
    eval_a = encoder.apply(params, x, None, train=False)
    np.testing.assert_allclose(encoder.apply(params, x, None, train=False), eval_a)
    train_a = encoder.apply(params, x, None, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = encoder.apply(params, x, None, train=True, rngs={"dropout": jax.random.key(3)})
    assert np.abs(np.asarray(train_a - train_b)).max() > 1e-3


def test_too_long_input_is_rejected():
    model, params, _ = model_and_params(False)
    with pytest.raises(ValueError, match="max_len=32"):
        model.apply(params, jnp.ones((1, 40), jnp.int32), jnp.ones((1, 3), jnp.int32))


def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_gradients():
    _, params, apply = model_and_params(False)
    bf16 = Seq2Seq(Seq2SeqConfig(VOCAB, dataclasses.replace(BLOCK, dtype=jnp.bfloat16), 2, 2, max_len=32))
    rng = np.random.default_rng(3)
    src, tgt = tokens(rng, (2, 6)), tokens(rng, (2, 5))
    shapes = jax.eval_shape(bf16.init, jax.random.key(0), src, tgt)
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    reference = np.asarray(apply(params, src, tgt))
    error = np.abs(np.asarray(jax.jit(bf16.apply)(params, src, tgt), np.float32) - reference).max()
    assert 1e-4 < error < 0.05 * np.abs(reference).max()  # bfloat16 rounding: present, and small
    grads = jax.jit(jax.grad(lambda p: jnp.mean(bf16.apply(p, src, tgt).astype(jnp.float32) ** 2)))(params)
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
