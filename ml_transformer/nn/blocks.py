"""Feed-forward, encoder and decoder blocks, and the encoder stack.

Each sublayer (attention or feed-forward) is wrapped in a residual connection with
LayerNorm: post-LN as in the paper, `x = LN(x + Dropout(F(x)))`, or pre-LN,
`x = x + Dropout(F(LN(x)))` with a final LayerNorm after the stack.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_transformer.config_checks import set_fields
from ml_transformer.nn.attention import MultiHeadAttention

Array = jax.Array

# Feed-forward activations by config name. "gelu" is the tanh approximation (GPT-2's
# "gelu_new"), "gelu_exact" the erf form (BERT's and ViT's "gelu"), "silu" Marian's "swish".
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The hyperparameters every block shares."""

    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    pre_ln: bool = False
    activation: str = "relu"  # a key of ACTIVATIONS
    layer_norm_epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    @classmethod
    def from_model_config(cls, model_config, **overrides) -> "BlockConfig":
        """The block settings of an experiment's `config.model` (fields `d_model`,
        `num_heads`, `d_ff`, `dropout_rate`, `pre_ln`, `dtype`, `attention_impl` and, where
        present, `attention_dropout_rate`, `activation`, `layer_norm_epsilon`); `overrides`
        replace any of them."""
        m = model_config
        fields = dict(
            d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff, dropout_rate=m.dropout_rate,
            attention_dropout_rate=m.get("attention_dropout_rate", 0.0), pre_ln=m.pre_ln,
            dtype=jnp.dtype(m.dtype), attention_impl=m.attention_impl or None,
            **set_fields(m, "activation", "layer_norm_epsilon"),
        )
        return cls(**{**fields, **overrides})

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: one of {', '.join(ACTIVATIONS)}")

    def layer_norm(self, name: str | None = None) -> nn.LayerNorm:
        """A LayerNorm with these settings' epsilon and dtypes."""
        return nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=name)


class FeedForward(nn.Module):
    """Position-wise FFN(x) = W₂ act(W₁x + b₁) + b₂."""

    config: BlockConfig

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        c = self.config
        activation = ACTIVATIONS[c.activation]
        dense = lambda features: nn.Dense(  # noqa: E731
            features, dtype=c.dtype, param_dtype=c.param_dtype, kernel_init=nn.initializers.xavier_uniform()
        )
        h = activation(dense(c.d_ff)(x))
        h = nn.Dropout(c.dropout_rate)(h, deterministic=not train)
        return dense(c.d_model)(h)


class Residual(nn.Module):
    """Residual connection with LayerNorm (pre- or post-) and dropout around a sublayer."""

    config: BlockConfig

    @nn.compact
    def __call__(self, x: Array, sublayer: Callable[[Array], Array], *, train: bool) -> Array:
        c = self.config
        norm = c.layer_norm()
        drop = nn.Dropout(c.dropout_rate)
        if c.pre_ln:
            return x + drop(sublayer(norm(x)), deterministic=not train)
        return norm(x + drop(sublayer(x), deterministic=not train))


def _attention(c: BlockConfig) -> MultiHeadAttention:
    return MultiHeadAttention(
        features=c.d_model,
        num_heads=c.num_heads,
        dropout_rate=c.attention_dropout_rate,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        implementation=c.attention_impl,
    )


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward."""

    config: BlockConfig

    def setup(self):
        self.self_attention = _attention(self.config)
        self.feed_forward = FeedForward(self.config)
        self.residual_attention = Residual(self.config)
        self.residual_ff = Residual(self.config)

    def __call__(self, x: Array, mask: Array | None, *, train: bool) -> Array:
        x = self.residual_attention(
            x, lambda h: self.self_attention(h, h, mask, train=train)[0], train=train
        )
        return self.residual_ff(x, lambda h: self.feed_forward(h, train=train), train=train)


class DecoderBlock(nn.Module):
    """Masked self-attention, encoder-decoder attention (K, V from the encoder), feed-forward;
    with `cross=False` (decoder-only models) no encoder-decoder attention, and `memory`,
    `cross_mask` are unused.

    With `cache` (`{'self': ...}`, plus `'cross'` when `cross`) it decodes the new
    positions and returns the updated cache.
    """

    config: BlockConfig
    cross: bool = True

    def setup(self):
        self.self_attention = _attention(self.config)
        self.feed_forward = FeedForward(self.config)
        self.residual_self = Residual(self.config)
        self.residual_ff = Residual(self.config)
        if self.cross:
            self.cross_attention = _attention(self.config)
            self.residual_cross = Residual(self.config)

    def __call__(
        self,
        x: Array,
        memory: Array | None,
        self_mask: Array | None,
        cross_mask: Array | None,
        *,
        train: bool,
        cache: dict | None = None,
    ) -> tuple[Array, dict | None]:
        new_cache = {}

        def self_attend(h):
            out, new_cache["self"] = self.self_attention(
                h, h, self_mask, train=train, cache=None if cache is None else cache["self"]
            )
            return out

        def cross_attend(h):
            out, new_cache["cross"] = self.cross_attention(
                h, memory, cross_mask, train=train, cache=None if cache is None else cache["cross"]
            )
            return out

        x = self.residual_self(x, self_attend, train=train)
        if self.cross:
            x = self.residual_cross(x, cross_attend, train=train)
        x = self.residual_ff(x, lambda h: self.feed_forward(h, train=train), train=train)
        return x, (new_cache if cache is not None else None)


class Encoder(nn.Module):
    """A stack of encoder blocks over already embedded inputs `[B, L, d]`."""

    config: BlockConfig
    num_layers: int

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, train: bool) -> Array:
        for i in range(self.num_layers):
            x = EncoderBlock(self.config, name=f"layers_{i}")(x, mask, train=train)
        if self.config.pre_ln:
            x = self.config.layer_norm("final_norm")(x)
        return x
