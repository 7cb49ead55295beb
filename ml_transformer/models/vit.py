"""The Vision Transformer (Dosovitskiy et al., 2021): an encoder-only image classifier.

Patches → linear patch embedding → a learned class token prepended → learned position
embeddings → dropout → pre-LN encoder (GELU MLP, final LayerNorm) → a dense head on the
class token (`pool='token'`) or on the mean of the patch tokens (`pool='gap'`). The
head starts at zero, as in the paper.

Position embeddings are laid out for one patch grid; `resize_position_embeddings` and
`adapt_restored_params` carry them to another image resolution.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ml_transformer.config_checks import set_fields
from ml_transformer.nn.blocks import BlockConfig, Encoder
from ml_transformer.nn.embeddings import PatchEmbedding
from ml_transformer.train.checkpoints import fit_params

Array = jax.Array

# Variant name → (d_model, num_layers, num_heads, d_ff); the name's suffix is the patch size.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}
POSITION_EMBEDDING = "position_embedding"


def variant(name: str) -> dict[str, int]:
    """Sizes of a named variant such as 'B/16': patch_size, d_model, num_layers, num_heads, d_ff."""
    size, _, patch = name.partition("/")
    if size not in VARIANTS or not patch.isdigit() or int(patch) < 1:
        raise ValueError(f"unknown ViT variant {name!r} (SIZE/PATCH with SIZE one of {', '.join(VARIANTS)})")
    d_model, num_layers, num_heads, d_ff = VARIANTS[size]
    return dict(patch_size=int(patch), d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=d_ff)


class ViT(nn.Module):
    """Image classifier: `apply(variables, images [B, H, W, C], train=)` → logits `[B, num_classes]`.

    `image_size`, when set, is the only input size accepted (H = W = image_size).
    """

    num_classes: int
    patch_size: int = 16
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    pool: str = "token"
    image_size: int = 0
    activation: str = "gelu"  # tanh-approximated GELU; "gelu_exact" as in Hugging Face's ViT
    layer_norm_epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> Array:
        if self.pool not in ("token", "gap"):
            raise ValueError(f"unknown ViT pooling {self.pool!r} (token, gap)")
        height, width = images.shape[1:3]
        if self.image_size and (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"ViT for {self.image_size}x{self.image_size} images got {height}x{width} inputs")
        x = PatchEmbedding(
            self.patch_size, self.d_model, dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding"
        )(images.astype(self.dtype))
        batch, num_patches, _ = x.shape
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.d_model), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.d_model)), x], axis=1)
        position = self.param(
            POSITION_EMBEDDING, nn.initializers.normal(stddev=0.02), (1, 1 + num_patches, self.d_model),
            self.param_dtype,
        )
        x = nn.Dropout(self.dropout_rate)(x + position.astype(x.dtype), deterministic=not train)
        block = BlockConfig(
            d_model=self.d_model,
            num_heads=self.num_heads,
            d_ff=self.d_ff,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            pre_ln=True,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
        )
        x = Encoder(block, self.num_layers, name="encoder")(x, None, train=train)
        pooled = x[:, 0] if self.pool == "token" else jnp.mean(x[:, 1:], axis=1)
        return nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, param_dtype=self.param_dtype, name="head"
        )(pooled.astype(jnp.float32))


def from_config(model_config, num_classes: int) -> ViT:
    """The ViT of `config.model`: a `variant` ('' for custom sizes) whose sizes the nonzero
    fields among patch_size, d_model, num_layers, num_heads, d_ff override."""
    m = model_config
    sizes = {k: m[k] for k in ("patch_size", "d_model", "num_layers", "num_heads", "d_ff")}
    if m.variant:
        defaults = variant(m.variant)
        sizes = {k: v or defaults[k] for k, v in sizes.items()}
    missing = [k for k, v in sizes.items() if v <= 0]
    if missing:
        raise ValueError(f"config.model: {', '.join(missing)} must be > 0 (or name a variant)")
    return ViT(
        num_classes=num_classes,
        **sizes,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        pool=m.pool,
        image_size=m.image_size,
        **set_fields(m, "activation", "layer_norm_epsilon"),
        dtype=jnp.dtype(m.dtype),
        attention_impl=m.attention_impl or None,
    )


def resize_position_embeddings(
    posemb: Array, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> Array:
    """Position embeddings `[1, 1+N, d]` for an `h x w` patch grid: the class token's row
    is kept, the grid's rows (a square grid unless `old_grid` is given) are resized
    bilinearly."""
    posemb = jnp.asarray(posemb)
    num_patches, d = posemb.shape[1] - 1, posemb.shape[2]
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"{num_patches} position embeddings are not a square grid; give old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"grid {old_grid} does not hold {num_patches} position embeddings")
    if tuple(new_grid) == tuple(old_grid):
        return posemb
    grid = posemb[0, 1:].reshape(*old_grid, d)
    resized = jax.image.resize(grid, (*new_grid, d), method="bilinear").astype(posemb.dtype)
    return jnp.concatenate([posemb[:, :1], resized.reshape(1, -1, d)], axis=1)


def resize_restored(name: str, value, shape: tuple):
    """A restored parameter fitted to `shape` (`checkpoints.Resize`): position embeddings
    of another square patch grid are resized; anything else cannot be fitted (None)."""
    old = np.shape(value)
    if name.rpartition("/")[2] != POSITION_EMBEDDING or len(old) != 3 or old[::2] != shape[::2]:
        return None
    old_side, new_side = math.isqrt(old[1] - 1), math.isqrt(shape[1] - 1)
    if old_side**2 != old[1] - 1 or new_side**2 != shape[1] - 1:
        return None
    return resize_position_embeddings(value, (new_side, new_side))


def adapt_restored_params(restored_params, target_params):
    """`restored_params` fitted to the shapes of `target_params`: position embeddings of
    another (square) grid are resized; any other difference raises ValueError."""
    return fit_params(restored_params, target_params, resize_restored)
