"""Token embeddings and positional encodings (sinusoidal and learned)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def sinusoidal_encoding(length: int, d_model: int, halves: bool = False) -> np.ndarray:
    """The paper's §3.5 table `[length, d_model]`:
    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model));
    with `halves`, the same sines in the first half of the features and the cosines in the
    second (Marian's and Pegasus's layout).
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
    position = np.arange(length, dtype=np.float64)[:, None]
    rates = 1.0 / np.power(10000.0, np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    sines, cosines = np.sin(position * rates), np.cos(position * rates)
    if halves:
        return np.concatenate([sines, cosines], axis=1).astype(np.float32)
    table = np.zeros((length, d_model), dtype=np.float64)
    table[:, 0::2] = sines
    table[:, 1::2] = cosines
    return table.astype(np.float32)


class TokenEmbedding(nn.Module):
    """Token lookup scaled by √d_model (paper §3.4; unscaled with `scale=False`, as in BERT
    and GPT-2); `attend` reuses it as output projection."""

    vocab_size: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale: bool = True

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(stddev=self.features**-0.5),
            (self.vocab_size, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: Array) -> Array:
        embedded = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
        return embedded * jnp.sqrt(self.features).astype(self.dtype) if self.scale else embedded

    def attend(self, x: Array) -> Array:
        """Logits `x · Eᵀ` against every token embedding."""
        return jnp.einsum("...d,vd->...v", x, self.embedding.astype(self.dtype))


class PositionEncoding(nn.Module):
    """Adds a position signal to `[B, L, d]` inputs: 'sinusoidal', 'sinusoidal_halves' (the
    same table with sines and cosines in two halves), 'learned' or 'none'.

    `positions` (int, `[B, L]` or a scalar offset) defaults to 0..L-1; cached decoding
    passes the current step.
    """

    kind: str
    max_len: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, positions: Array | None = None) -> Array:
        if self.kind == "none":
            return x
        length, d_model = x.shape[-2:]
        if self.kind in ("sinusoidal", "sinusoidal_halves"):
            table = jnp.asarray(sinusoidal_encoding(self.max_len, d_model, halves=self.kind == "sinusoidal_halves"))
        elif self.kind == "learned":
            table = self.param(
                "embedding", nn.initializers.normal(stddev=0.02), (self.max_len, d_model), self.param_dtype
            )
        else:
            raise ValueError(f"unknown position encoding {self.kind!r} (sinusoidal, sinusoidal_halves, learned, none)")
        if positions is None:
            positions = jnp.arange(length)
        elif jnp.ndim(positions) == 0:
            positions = positions + jnp.arange(length)
        return x + jnp.take(table, positions, axis=0).astype(x.dtype)


class PatchEmbedding(nn.Module):
    """Cuts images `[B, H, W, C]` into non-overlapping `patch_size`² patches, row by row,
    and projects each patch's pixels linearly to `features`: `[B, (H/P)·(W/P), features]`.

    The kernel is `[P·P·C, features]` over a patch's pixels in (row, column, channel) order.
    """

    patch_size: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        batch, height, width, channels = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {p}")
        patches = images.reshape(batch, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="projection")(patches)
