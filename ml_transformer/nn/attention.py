"""Scaled dot-product and multi-head attention, masks, and the decoding KV cache.

Layout: queries, keys and values are `[batch, length, heads, head_dim]` (the layout of
`jax.nn.dot_product_attention`); masks are boolean `[batch, heads or 1, q_len, k_len]`,
True where a query may attend to a key.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
    """`[B, 1, Lq, Lk]` mask from per-position validity `[B, Lq]` and `[B, Lk]`."""
    return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def causal_mask(length: int) -> Array:
    """`[1, 1, L, L]` look-ahead mask: position i attends to positions <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the masks that are not None (None if all are)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def attention_weights(query: Array, key: Array, mask: Array | None = None) -> Array:
    """softmax(QKᵀ/√d_k) with masked scores set to the dtype's minimum: `[B, H, Lq, Lk]`.

    A query row whose keys are all masked gets uniform weights (finite, never NaN).
    """
    depth = query.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(depth).astype(query.dtype)
    return masked_softmax(scores, mask).astype(query.dtype)


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax over the last axis in float32, masked scores set to the minimum first."""
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    return jax.nn.softmax(scores, axis=-1)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    *,
    implementation: str | None = None,
) -> Array:
    """softmax(QKᵀ/√d_k + mask)V through `jax.nn.dot_product_attention` (the fast path).

    `implementation`: None (let XLA choose), 'xla', or 'cudnn' (GPU flash attention).
    """
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with learned Q, K, V and output projections.

    d_k = features / num_heads; heads run in parallel and are concatenated by the output
    projection. Weights are computed explicitly when attention dropout is active or the
    caller makes the 'intermediates' collection mutable (they are then sown there as
    `attention_weights`, for pictures); otherwise the fused fast path runs.

    Decoding with a cache: `__call__(..., cache=...)` takes and returns a dict
    `{'key', 'value', 'index': int32 scalar}` (from `init_self_attention_cache`) for
    self-attention, or `{'key', 'value'}` precomputed by `project_memory` for
    encoder-decoder attention.
    """

    features: int
    num_heads: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    implementation: str | None = None

    def setup(self):
        if self.features % self.num_heads:
            raise ValueError(f"d_model={self.features} is not divisible by num_heads={self.num_heads}")
        heads = (self.num_heads, self.features // self.num_heads)
        init = nn.initializers.xavier_uniform()  # DenseGeneral initializes the kernel flattened to 2-D
        dense = lambda: nn.DenseGeneral(heads, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init)  # noqa: E731
        self.query, self.key, self.value = dense(), dense(), dense()
        self.out = nn.DenseGeneral(
            self.features,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=init,
        )
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None,
        mask: Array | None = None,
        *,
        train: bool = False,
        cache: dict | None = None,
    ) -> tuple[Array, dict | None]:
        """Attends from `inputs_q` to `inputs_kv`; returns (outputs, updated cache or None)."""
        query = self.query(inputs_q)
        if cache is not None:
            out, new_cache = self._attend_cached(query, inputs_kv, mask, cache)
            return self.out(out), new_cache
        key, value = self.key(inputs_kv), self.value(inputs_kv)
        sowing = self.is_mutable_collection("intermediates")
        if sowing or (train and self.dropout_rate > 0):
            weights = attention_weights(query, key, mask)
            if sowing:
                self.sow("intermediates", "attention_weights", weights)
            weights = self.dropout(weights, deterministic=not train)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        else:
            out = dot_product_attention(query, key, value, mask, implementation=self.implementation)
        return self.out(out), None

    def _attend_cached(self, query: Array, inputs_kv: Array | None, mask: Array | None, cache: dict):
        """Decoding attention of new positions over a cache held in the layout its two dots
        read without transposing (`init_self_attention_cache`, `project_memory`).

        The cache has one row per example and the queries K rows per example (row b * K + j:
        beam j of example b; K = 1 outside beam search), which read that row together: the
        encoder-decoder memory, or a self-attention cache in which beam j writes position t
        at column t * K + j. Beams that swap places keep their keys where they were written:
        `mask` `[B, 1, K, max_len * K]` says which columns each beam's positions are in
        (`tasks.translation.cached_decoding`). In self-attention the `Lq` new positions (one
        per step, or with K = 1 a whole prompt at once) join the cache at `index`, and with
        K = 1 each attends to the cached positions up to itself."""
        batch, heads, depth = cache["key"].shape[:3]
        rows, length = query.shape[:2]
        beams = rows // batch
        if "index" in cache:  # self-attention: the new keys and values join the cache
            index = cache["index"]
            key = self.key(inputs_kv).reshape(batch, beams, length, heads, depth).transpose(0, 3, 4, 2, 1)
            value = self.value(inputs_kv).reshape(batch, beams, length, heads, depth).transpose(0, 3, 2, 1, 4)
            keys = jax.lax.dynamic_update_slice_in_dim(
                cache["key"], key.reshape(batch, heads, depth, -1).astype(cache["key"].dtype), index * beams, axis=3)
            values = jax.lax.dynamic_update_slice_in_dim(
                cache["value"], value.reshape(batch, heads, -1, depth).astype(cache["value"].dtype), index * beams,
                axis=2)
            if beams == 1:
                seen = jnp.arange(keys.shape[3])[None, :] <= index + jnp.arange(length)[:, None]
                mask = combine_masks(mask, seen[None, None])
            cache = {"key": keys, "value": values, "index": index + length}
        query = query.reshape(batch, beams * length, heads, depth).transpose(0, 2, 1, 3)
        scores = jnp.einsum("bhqd,bhdk->bhqk", query, cache["key"]) / jnp.sqrt(depth).astype(query.dtype)
        weights = masked_softmax(scores, mask).astype(query.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, cache["value"]).transpose(0, 2, 1, 3)
        return out.reshape(rows, length, heads, depth), cache

    def project_memory(self, memory: Array) -> dict:
        """Keys and values of the encoder outputs, computed once for cached decoding."""
        return {"key": self.key(memory).transpose(0, 2, 3, 1), "value": self.value(memory).transpose(0, 2, 1, 3)}


def init_self_attention_cache(batch: int, max_len: int, num_heads: int, head_dim: int, dtype, beams: int = 1) -> dict:
    """An empty self-attention cache for `max_len` decoding steps of `beams` hypotheses per
    example: keys `[B, H, D, max_len * beams]`, values `[B, H, max_len * beams, D]`, position
    t of beam j at t * beams + j (the layouts `_attend_cached` reads)."""
    return {"key": jnp.zeros((batch, num_heads, head_dim, max_len * beams), dtype),
            "value": jnp.zeros((batch, num_heads, max_len * beams, head_dim), dtype),
            "index": jnp.array(0, jnp.int32)}
