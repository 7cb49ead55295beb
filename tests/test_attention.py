"""Attention numerics against an independent float64 NumPy computation, and masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_transformer.nn.attention import (
    MultiHeadAttention,
    attention_weights,
    causal_mask,
    dot_product_attention,
    padding_mask,
)


def reference_attention(q, k, v, mask=None):
    """softmax(QKᵀ/√d_k)V per head in float64; q, k, v: [B, L, H, D]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(np.asarray(mask), scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v), weights


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=(2, 5, 3, 8)).astype(np.float32) for _ in range(3))


def random_padding(rng, batch, length):
    lengths = rng.integers(1, length + 1, size=batch)
    return np.arange(length)[None] < lengths[:, None]


@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_formula(qkv, masked):
    q, k, v = qkv
    mask = None
    if masked:
        valid = random_padding(np.random.default_rng(1), 2, 5)
        mask = padding_mask(jnp.ones((2, 5), bool), jnp.asarray(valid)) & causal_mask(5)
    expected, expected_weights = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(dot_product_attention(q, k, v, mask), expected, atol=1e-5)
    weights = attention_weights(jnp.asarray(q), jnp.asarray(k), mask)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)


def test_masks():
    np.testing.assert_array_equal(causal_mask(3)[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    m = padding_mask(jnp.array([[True, True, False]]), jnp.array([[True, False]]))
    assert m.shape == (1, 1, 3, 2)
    np.testing.assert_array_equal(m[0, 0], [[1, 0], [1, 0], [0, 0]])


def test_fully_masked_rows_are_finite(qkv):
    q, k, v = qkv
    mask = jnp.zeros((2, 1, 5, 5), bool)
    assert np.isfinite(np.asarray(attention_weights(jnp.asarray(q), jnp.asarray(k), mask))).all()


def test_multi_head_shapes_and_projections():
    d_model, heads = 24, 4
    x = jax.random.normal(jax.random.key(0), (2, 5, d_model))
    mha = MultiHeadAttention(features=d_model, num_heads=heads)
    variables = mha.init(jax.random.key(1), x, x)
    p = variables["params"]
    for name in ("query", "key", "value"):
        assert p[name]["kernel"].shape == (d_model, heads, d_model // heads)  # d_k = d_model / h
    assert p["out"]["kernel"].shape == (heads, d_model // heads, d_model)
    (out, _), inter = mha.apply(variables, x, x, mutable=["intermediates"])
    assert out.shape == (2, 5, d_model)
    # Recompute from the parameters with the NumPy reference: projections, heads, concat, output.
    proj = lambda n: np.einsum("bld,dhk->blhk", x, p[n]["kernel"]) + np.asarray(p[n]["bias"])  # noqa: E731
    heads_out, weights = reference_attention(proj("query"), proj("key"), proj("value"))
    expected = np.einsum("blhk,hkd->bld", heads_out, p["out"]["kernel"]) + np.asarray(p["out"]["bias"])
    np.testing.assert_allclose(out, expected, atol=1e-4)
    sown = inter["intermediates"]["attention_weights"][0]
    np.testing.assert_allclose(sown, weights, atol=1e-5)
    np.testing.assert_allclose(np.sum(sown, axis=-1), 1.0, atol=1e-6)  # a distribution over keys
    # The sown-weights path and the fast path agree.
    fast, _ = mha.apply(variables, x, x)
    np.testing.assert_allclose(fast, out, atol=1e-5)


def test_heads_must_divide_d_model():
    x = jnp.zeros((1, 2, 10))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(features=10, num_heads=4).init(jax.random.key(0), x, x)
