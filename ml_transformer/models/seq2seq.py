"""The encoder-decoder Transformer of "Attention Is All You Need"."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_transformer.nn.attention import causal_mask, combine_masks, init_self_attention_cache, padding_mask
from ml_transformer.nn.blocks import BlockConfig, DecoderBlock, Encoder
from ml_transformer.nn.embeddings import PositionEncoding, TokenEmbedding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Architecture of the encoder-decoder model; token id 0 is padding."""

    vocab_size: int
    block: BlockConfig = BlockConfig()
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    max_len: int = 512
    position: str = "sinusoidal"
    share_embeddings: bool = True
    tie_output: bool = True
    bos_id: int = 2


def shift_right(targets: Array, bos_id: int) -> Array:
    """Decoder inputs for teacher forcing: [BOS, y₁, …, y_{n-1}]."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], bos_id), targets[:, :-1]], axis=1)


class Decoder(nn.Module):
    """Embedded targets → decoder blocks → (final LayerNorm if pre-LN)."""

    config: Seq2SeqConfig

    def setup(self):
        b = self.config.block
        self.layers = [DecoderBlock(b) for _ in range(self.config.num_decoder_layers)]
        self.final_norm = nn.LayerNorm(dtype=b.dtype, param_dtype=b.param_dtype) if b.pre_ln else None

    def __call__(self, x, memory, self_mask, cross_mask, *, train: bool, cache: list | None = None):
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, memory, self_mask, cross_mask, train=train, cache=cache and cache[i])
            new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, (new_cache if cache is not None else None)

    def init_cache(self, memory: Array, max_len: int) -> list:
        """Per layer: an empty self-attention cache and the projected encoder memory."""
        b = self.config.block
        head_dim = b.d_model // b.num_heads
        return [
            {
                "self": init_self_attention_cache(memory.shape[0], max_len, b.num_heads, head_dim, b.dtype),
                "cross": layer.cross_attention.project_memory(memory),
            }
            for layer in self.layers
        ]


class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer.

    `__call__(inputs, targets, train=)` returns teacher-forced logits `[B, Lt, V]`;
    `encode`, `init_decode_state` and `decode_step` serve cached autoregressive decoding.
    """

    config: Seq2SeqConfig

    def setup(self):
        c, b = self.config, self.config.block
        embed = lambda: TokenEmbedding(c.vocab_size, b.d_model, dtype=b.dtype, param_dtype=b.param_dtype)  # noqa: E731
        self.source_embedding = embed()
        self.target_embedding = self.source_embedding if c.share_embeddings else embed()
        self.source_position = PositionEncoding(c.position, c.max_len, param_dtype=b.param_dtype)
        self.target_position = PositionEncoding(c.position, c.max_len, param_dtype=b.param_dtype)
        self.dropout = nn.Dropout(b.dropout_rate)
        self.encoder = Encoder(b, c.num_encoder_layers)
        self.decoder = Decoder(c)
        if not c.tie_output:
            self.output = nn.Dense(c.vocab_size, dtype=b.dtype, param_dtype=b.param_dtype)

    def encode(self, inputs: Array, *, train: bool = False) -> Array:
        """Source tokens `[B, Ls]` → encoder outputs `[B, Ls, d]`."""
        self._check_length(inputs.shape[1])
        valid = inputs > 0
        x = self.source_position(self.source_embedding(inputs))
        x = self.dropout(x, deterministic=not train)
        return self.encoder(x, padding_mask(valid, valid), train=train)

    def decode(self, memory: Array, inputs: Array, targets: Array, *, train: bool = False) -> Array:
        """Teacher-forced decoder logits `[B, Lt, V]` given encoder outputs."""
        self._check_length(targets.shape[1])
        decoder_inputs = shift_right(targets, self.config.bos_id)
        target_valid = targets > 0
        self_mask = combine_masks(padding_mask(target_valid, target_valid), causal_mask(targets.shape[1]))
        cross_mask = padding_mask(target_valid, inputs > 0)
        x = self.target_position(self.target_embedding(decoder_inputs))
        x = self.dropout(x, deterministic=not train)
        x, _ = self.decoder(x, memory, self_mask, cross_mask, train=train)
        return self._logits(x)

    def __call__(self, inputs: Array, targets: Array, *, train: bool = False) -> Array:
        return self.decode(self.encode(inputs, train=train), inputs, targets, train=train)

    def init_decode_state(self, inputs: Array, max_len: int) -> dict:
        """Encodes the source once and returns the decoding state for `decode_step`.

        Leaves with a leading batch axis: the per-layer caches and the source mask; the
        caches' scalar `index` is the position being decoded.
        """
        self._check_length(max_len)
        memory = self.encode(inputs)
        return {
            "cache": self.decoder.init_cache(memory, max_len),
            "source_valid": inputs > 0,
        }

    def decode_step(self, tokens: Array, state: dict) -> tuple[Array, dict]:
        """One decoding step: previous tokens `[B, 1]` → next-token logits `[B, V]`."""
        cross_mask = state["source_valid"][:, None, None, :]
        position = state["cache"][0]["self"]["index"]
        x = self.target_position(self.target_embedding(tokens), position)
        x, cache = self.decoder(x, None, None, cross_mask, train=False, cache=state["cache"])
        logits = self._logits(x)[:, -1]
        return logits, {**state, "cache": cache}

    def _logits(self, x: Array) -> Array:
        if self.config.tie_output:
            return self.target_embedding.attend(x).astype(jnp.float32)
        return self.output(x).astype(jnp.float32)

    def _check_length(self, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds model max_len={self.config.max_len}")
