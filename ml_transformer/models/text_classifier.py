"""Encoder-only text classifier: token + learned position embedding → encoder → global max
pooling over the real tokens → dropout → dense (one sigmoid logit or softmax logits).

Inputs are int32 token ids `[B, L]` with 0 as padding, L <= `max_len`. Padding is masked
out of attention and out of the max pooling; a row with no token pools to zeros.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_transformer.nn.attention import padding_mask
from ml_transformer.nn.blocks import BlockConfig, Encoder
from ml_transformer.nn.embeddings import PositionEncoding, TokenEmbedding

HEADS = ("sigmoid", "softmax")


@dataclasses.dataclass(frozen=True)
class TextClassifierConfig:
    vocab_size: int
    num_classes: int
    block: BlockConfig
    num_layers: int = 1
    max_len: int = 600
    dropout_rate: float = 0.5  # on the pooled features
    head: str = "sigmoid"  # one logit for two classes, or "softmax": num_classes logits

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: one of {', '.join(HEADS)}")
        if self.head == "sigmoid" and self.num_classes != 2:
            raise ValueError(f"the sigmoid head needs 2 classes, got {self.num_classes}")


def masked_max_pool(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Max over the positions where `valid` `[B, L]` is True of `x` `[B, L, d]`; rows with
    no valid position give zeros."""
    lowest = jnp.finfo(x.dtype).min
    pooled = jnp.max(jnp.where(valid[..., None], x, lowest), axis=1)
    return jnp.where(jnp.any(valid, axis=1, keepdims=True), pooled, 0)


class TextClassifier(nn.Module):
    config: TextClassifierConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits `[B, 1]` (sigmoid head) or `[B, num_classes]` (softmax head)."""
        c, b = self.config, self.config.block
        if tokens.shape[1] > c.max_len:
            raise ValueError(f"inputs of length {tokens.shape[1]} exceed max_len={c.max_len}")
        valid = tokens > 0
        x = TokenEmbedding(c.vocab_size, b.d_model, b.dtype, b.param_dtype, name="embed")(tokens)
        x = PositionEncoding("learned", c.max_len, b.param_dtype, name="position")(x)
        x = Encoder(b, c.num_layers, name="encoder")(x, padding_mask(valid, valid), train=train)
        x = masked_max_pool(x, valid)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=not train)
        outputs = 1 if c.head == "sigmoid" else c.num_classes
        return nn.Dense(outputs, dtype=b.dtype, param_dtype=b.param_dtype, name="head")(x)


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
    ))
