"""Encoder-only text classifier: token + learned position embedding → encoder → global max
pooling over the real tokens → dropout → dense (one sigmoid logit or softmax logits).

Inputs are int32 token ids `[B, L]` with 0 as padding, L <= `max_len`. Padding is masked
out of attention and out of the pooling; a row with no token pools to zeros.

The switches `scale_embeddings`, `type_vocab_size`, `embedding_norm` and `pool='mean'`
make the encoder a BERT-family one (e.g. MiniLM, read by `interop.bert`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_transformer.config_checks import set_fields
from ml_transformer.nn.attention import padding_mask
from ml_transformer.nn.blocks import BlockConfig, Encoder
from ml_transformer.nn.embeddings import PositionEncoding, TokenEmbedding

HEADS = ("sigmoid", "softmax")
POOLS = ("max", "mean", "first")


@dataclasses.dataclass(frozen=True)
class TextClassifierConfig:
    vocab_size: int
    num_classes: int
    block: BlockConfig
    num_layers: int = 1
    max_len: int = 600
    dropout_rate: float = 0.5  # on the pooled features
    head: str = "sigmoid"  # one logit for two classes, or "softmax": num_classes logits
    pool: str = "max"  # over the real tokens; or "mean", or "first" (the first token)
    scale_embeddings: bool = True  # token embeddings times √d_model
    type_vocab_size: int = 0  # > 0: a token-type embedding table, whose type 0 every token adds
    embedding_norm: bool = False  # LayerNorm on the summed embeddings

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: one of {', '.join(HEADS)}")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r}: one of {', '.join(POOLS)}")
        if self.head == "sigmoid" and self.num_classes != 2:
            raise ValueError(f"the sigmoid head needs 2 classes, got {self.num_classes}")


def masked_max_pool(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Max over the positions where `valid` `[B, L]` is True of `x` `[B, L, d]`; rows with
    no valid position give zeros."""
    lowest = jnp.finfo(x.dtype).min
    pooled = jnp.max(jnp.where(valid[..., None], x, lowest), axis=1)
    return jnp.where(jnp.any(valid, axis=1, keepdims=True), pooled, 0)


def masked_mean_pool(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the positions where `valid` `[B, L]` is True of `x` `[B, L, d]`; rows with
    no valid position give zeros."""
    weights = valid[..., None].astype(x.dtype)
    return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)


class TextClassifier(nn.Module):
    """`apply(variables, tokens, train=)` → logits `[B, 1]` (sigmoid head) or
    `[B, num_classes]` (softmax head); `method='pooled'` or `'encoded'` give the features."""

    config: TextClassifierConfig

    def setup(self):
        c, b = self.config, self.config.block
        self.embed = TokenEmbedding(c.vocab_size, b.d_model, b.dtype, b.param_dtype, scale=c.scale_embeddings)
        self.position = PositionEncoding("learned", c.max_len, b.param_dtype)
        if c.type_vocab_size:
            self.token_type = self.param("token_type", nn.initializers.normal(stddev=0.02),
                                         (c.type_vocab_size, b.d_model), b.param_dtype)
        if c.embedding_norm:
            self.embedding_norm = b.layer_norm()
        self.encoder = Encoder(b, c.num_layers)
        self.dropout = nn.Dropout(c.dropout_rate)
        self.head = nn.Dense(1 if c.head == "sigmoid" else c.num_classes, dtype=b.dtype, param_dtype=b.param_dtype)

    def encoded(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """The encoder outputs `[B, L, d]`."""
        c = self.config
        if tokens.shape[1] > c.max_len:
            raise ValueError(f"inputs of length {tokens.shape[1]} exceed max_len={c.max_len}")
        valid = tokens > 0
        x = self.position(self.embed(tokens))
        if c.type_vocab_size:
            x = x + self.token_type[0].astype(x.dtype)
        if c.embedding_norm:
            x = self.embedding_norm(x)
        return self.encoder(x, padding_mask(valid, valid), train=train)

    def pooled(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """The pooled features `[B, d]` that the head reads (before dropout)."""
        x, valid, pool = self.encoded(tokens, train=train), tokens > 0, self.config.pool
        if pool == "max":
            return masked_max_pool(x, valid)
        if pool == "mean":
            return masked_mean_pool(x, valid)
        return x[:, 0]

    def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.dropout(self.pooled(tokens, train=train), deterministic=not train)
        return self.head(x)


def from_config(model_config, num_classes: int) -> TextClassifier:
    """The classifier described by `config.model` (see experiments/textcls_*.py)."""
    m = model_config
    return TextClassifier(TextClassifierConfig(
        vocab_size=m.vocab_size,
        num_classes=num_classes,
        block=BlockConfig.from_model_config(m, dropout_rate=m.encoder_dropout_rate),
        num_layers=m.num_layers,
        max_len=m.max_len,
        dropout_rate=m.dropout_rate,
        head=m.head,
        **set_fields(m, "pool", "scale_embeddings", "type_vocab_size", "embedding_norm"),
    ))
