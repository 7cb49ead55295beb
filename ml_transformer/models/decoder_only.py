"""The decoder-only Transformer (GPT-style): masked self-attention blocks over one sequence.

Tokens are int32 `[B, L]` with 0 as padding, which may sit on either side of a row
(right-padded training batches, left-padded prompts). Padding is masked out of every
attention, and a token's position counts only the real tokens before it, so a row's
outputs do not depend on its padding. The output projection is tied to the embedding.

Cached decoding: `prefill` runs the prompts through the model once, filling each layer's
self-attention cache; `decode_step` then extends every row by one token per call.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_transformer.nn.attention import causal_mask, combine_masks, init_self_attention_cache, padding_mask
from ml_transformer.nn.blocks import BlockConfig, DecoderBlock
from ml_transformer.nn.embeddings import PositionEncoding, TokenEmbedding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    vocab_size: int
    block: BlockConfig = BlockConfig(pre_ln=True)
    num_layers: int = 6
    max_len: int = 512
    position: str = "learned"  # or "sinusoidal"
    scale_embeddings: bool = True  # token embeddings times √d_model (GPT-2: False)


def positions(valid: Array) -> Array:
    """Position of each token among the real tokens of its row `[B, L]` (0 at padding)."""
    return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)


class DecoderOnly(nn.Module):
    """`__call__(tokens, train=)` returns next-token logits `[B, L, V]` (float32)."""

    config: DecoderOnlyConfig

    def setup(self):
        c, b = self.config, self.config.block
        self.embedding = TokenEmbedding(c.vocab_size, b.d_model, dtype=b.dtype, param_dtype=b.param_dtype,
                                        scale=c.scale_embeddings)
        self.position = PositionEncoding(c.position, c.max_len, param_dtype=b.param_dtype)
        self.dropout = nn.Dropout(b.dropout_rate)
        self.layers = [DecoderBlock(b, cross=False) for _ in range(c.num_layers)]
        self.final_norm = b.layer_norm() if b.pre_ln else None

    def __call__(self, tokens: Array, *, train: bool = False) -> Array:
        self._check_length(tokens.shape[1])
        valid = tokens > 0
        mask = combine_masks(padding_mask(valid, valid), causal_mask(tokens.shape[1]))
        return self._run(tokens, valid, mask, None, train=train)[0]

    def _run(self, tokens: Array, valid: Array, mask: Array, cache: list | None, *, train: bool,
             offset: Array | int = 0):
        """Logits of `tokens` at positions `offset + positions(valid)`, and the updated cache."""
        x = self.position(self.embedding(tokens), offset + positions(valid))
        x = self.dropout(x, deterministic=not train)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, None, mask, None, train=train,
                                   cache=None if cache is None else {"self": cache[i]})
            new_cache.append(None if layer_cache is None else layer_cache["self"])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.embedding.attend(x).astype(jnp.float32), (None if cache is None else new_cache)

    def prefill(self, prompts: Array, max_len: int) -> tuple[list[dict], dict]:
        """Runs left-padded prompts `[B, P]` (P may be 0) into fresh caches of `max_len`
        positions, for `decode_step` to continue from.

        Returns (the caches, `memory`: what `decode_step` needs besides them: which cached
        positions hold real tokens, and each row's next position).
        """
        self._check_length(max_len)
        b = self.config.block
        batch, length = prompts.shape
        cache = [init_self_attention_cache(batch, max_len, b.num_heads, b.d_model // b.num_heads, b.dtype)
                 for _ in self.layers]
        valid = prompts > 0
        key_valid = jnp.zeros((batch, max_len), bool).at[:, :length].set(valid)
        if length:
            _, cache = self._run(prompts, valid, key_valid[:, None, None, :], cache, train=False)
        return cache, {"key_valid": key_valid, "next_position": jnp.sum(valid, axis=1, keepdims=True)}

    def decode_step(self, tokens: Array, cache: list[dict], memory: dict) -> tuple[Array, list[dict], dict]:
        """One token per row `[B, 1]` → (next-token logits `[B, V]`, caches, memory)."""
        index = cache[0]["index"]
        key_valid = jax.lax.dynamic_update_slice_in_dim(memory["key_valid"], tokens > 0, index, axis=1)
        logits, cache = self._run(tokens, jnp.ones_like(tokens, bool), key_valid[:, None, None, :], cache,
                                  train=False, offset=memory["next_position"])
        return logits[:, -1], cache, {"key_valid": key_valid, "next_position": memory["next_position"] + 1}

    def decode_step_uncached(self, tokens: Array, sequences: Array, index: Array) -> tuple[Array, Array]:
        """`decode_step` without a cache, to measure what the cache saves: `tokens` `[B, 1]`
        are written at column `index` of `sequences` `[B, max_len]` (the prompts, left-padded,
        then the tokens so far), and the whole model runs over all of them (shapes being
        static). Returns (next-token logits `[B, V]`, the updated sequences)."""
        sequences = jax.lax.dynamic_update_slice_in_dim(sequences, tokens, index, axis=1)
        logits = self(sequences)
        return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), sequences

    def _check_length(self, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds model max_len={self.config.max_len}")
