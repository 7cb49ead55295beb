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
    position: str = "sinusoidal"  # or "sinusoidal_halves" (Marian's table), "learned"
    share_embeddings: bool = True
    tie_output: bool = True
    bos_id: int = 2
    scale_embeddings: bool = True  # token embeddings times √d_model
    final_logits_bias: bool = False  # a learned bias added to the logits (Marian)


def shift_right(targets: Array, bos_id: int) -> Array:
    """Decoder inputs for teacher forcing: [BOS, y₁, …, y_{n-1}]."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], bos_id), targets[:, :-1]], axis=1)


class Decoder(nn.Module):
    """Embedded targets → decoder blocks → (final LayerNorm if pre-LN)."""

    config: Seq2SeqConfig

    def setup(self):
        b = self.config.block
        self.layers = [DecoderBlock(b) for _ in range(self.config.num_decoder_layers)]
        self.final_norm = b.layer_norm() if b.pre_ln else None

    def __call__(self, x, memory, self_mask, cross_mask, *, train: bool, cache: list | None = None):
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, memory, self_mask, cross_mask, train=train, cache=cache and cache[i])
            new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, (new_cache if cache is not None else None)

    def project_memory(self, memory: Array) -> list[dict]:
        """Per layer: the keys and values of encoder-decoder attention over `memory`."""
        return [layer.cross_attention.project_memory(memory) for layer in self.layers]

    def step(self, x: Array, cache: list[dict], cross: list[dict], cross_mask: Array,
             self_mask: Array | None = None) -> tuple[Array, list[dict]]:
        """One cached position through every layer: (outputs, updated self-attention caches)."""
        layer_caches = [{"self": c, "cross": m} for c, m in zip(cache, cross)]
        x, layer_caches = self(x, None, self_mask, cross_mask, train=False, cache=layer_caches)
        return x, [c["self"] for c in layer_caches]


class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer.

    `__call__(inputs, targets, train=)` returns teacher-forced logits `[B, Lt, V]`;
    `start_decoding` and `decode_step` serve cached autoregressive decoding.
    """

    config: Seq2SeqConfig

    def setup(self):
        c, b = self.config, self.config.block
        embed = lambda: TokenEmbedding(c.vocab_size, b.d_model, dtype=b.dtype, param_dtype=b.param_dtype,  # noqa: E731
                                       scale=c.scale_embeddings)
        self.source_embedding = embed()
        self.target_embedding = self.source_embedding if c.share_embeddings else embed()
        self.source_position = PositionEncoding(c.position, c.max_len, param_dtype=b.param_dtype)
        self.target_position = PositionEncoding(c.position, c.max_len, param_dtype=b.param_dtype)
        self.dropout = nn.Dropout(b.dropout_rate)
        self.encoder = Encoder(b, c.num_encoder_layers)
        self.decoder = Decoder(c)
        if not c.tie_output:
            self.output = nn.Dense(c.vocab_size, dtype=b.dtype, param_dtype=b.param_dtype)
        if c.final_logits_bias:
            self.logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (c.vocab_size,), b.param_dtype)

    def encode(self, inputs: Array, *, train: bool = False) -> Array:
        """Source tokens `[B, Ls]` → encoder outputs `[B, Ls, d]`."""
        self._check_length(inputs.shape[1])
        valid = inputs > 0
        x = self.source_position(self.source_embedding(inputs))
        x = self.dropout(x, deterministic=not train)
        return self.encoder(x, padding_mask(valid, valid), train=train)

    def decode(self, memory: Array, inputs: Array, targets: Array, *, train: bool = False) -> Array:
        """Teacher-forced decoder logits `[B, Lt, V]` given encoder outputs."""
        return self._decoder_logits(memory, inputs, shift_right(targets, self.config.bos_id), targets > 0, train=train)

    def _decoder_logits(self, memory: Array, inputs: Array, decoder_inputs: Array, valid: Array, *,
                        train: bool) -> Array:
        """Logits at every position of `decoder_inputs` `[B, Lt]`, of which `valid` are real."""
        self._check_length(decoder_inputs.shape[1])
        self_mask = combine_masks(padding_mask(valid, valid), causal_mask(decoder_inputs.shape[1]))
        x = self.target_position(self.target_embedding(decoder_inputs))
        x = self.dropout(x, deterministic=not train)
        x, _ = self.decoder(x, memory, self_mask, padding_mask(valid, inputs > 0), train=train)
        return self._logits(x)

    def __call__(self, inputs: Array, targets: Array, *, train: bool = False) -> Array:
        return self.decode(self.encode(inputs, train=train), inputs, targets, train=train)

    def start_decoding(self, inputs: Array, max_len: int, beams: int = 1) -> tuple[dict, list[dict]]:
        """Encodes the source once for cached decoding of up to `max_len` positions by
        `beams` hypotheses per source (rows b * beams + j of `decode_step`).

        Returns (memory, cache): `memory` holds what every step reads and none changes (the
        projected encoder outputs of each layer, the source mask), `cache` the empty
        self-attention caches of each layer, whose scalar `index` is the position being
        decoded. Both have one row per source, which its hypotheses read together.
        """
        self._check_length(max_len)
        b = self.config.block
        memory = {"cross": self.decoder.project_memory(self.encode(inputs)), "source_valid": inputs > 0}
        head_dim = b.d_model // b.num_heads
        cache = [init_self_attention_cache(inputs.shape[0], max_len, b.num_heads, head_dim, b.dtype, beams)
                 for _ in range(self.config.num_decoder_layers)]
        return memory, cache

    def decode_step(self, tokens: Array, cache: list[dict], memory: dict,
                    slots: Array | None = None) -> tuple[Array, list[dict]]:
        """One decoding step: previous tokens `[N, 1]` → (next-token logits `[N, V]`, cache).
        With K > 1 hypotheses per source, `slots` `[B, 1, K, max_len * K]` says which cached
        positions each reads (`nn.attention.MultiHeadAttention._attend_cached`)."""
        position = cache[0]["index"]
        x = self.target_position(self.target_embedding(tokens), position)
        x, cache = self.decoder.step(x, cache, memory["cross"], memory["source_valid"][:, None, None, :], slots)
        return self._logits(x)[:, -1], cache

    def start_decoding_uncached(self, inputs: Array, max_len: int) -> tuple[dict, dict]:
        """`start_decoding` for `decode_step_uncached`: (memory, the empty prefix)."""
        self._check_length(max_len)
        prefix = {"tokens": jnp.zeros((inputs.shape[0], max_len), jnp.int32), "index": jnp.array(0, jnp.int32)}
        return {"encoded": self.encode(inputs), "inputs": inputs}, prefix

    def decode_step_uncached(self, tokens: Array, prefix: dict, memory: dict) -> tuple[Array, dict]:
        """`decode_step` without a cache, to measure what the cache saves: the decoder runs
        over all `max_len` positions of the prefix at every step (shapes being static)."""
        index = prefix["index"]
        seen = jax.lax.dynamic_update_slice_in_dim(prefix["tokens"], tokens, index, axis=1)
        valid = jnp.broadcast_to(jnp.arange(seen.shape[1]) <= index, seen.shape)
        logits = self._decoder_logits(memory["encoded"], memory["inputs"], seen, valid, train=False)
        return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), {"tokens": seen, "index": index + 1}

    def _logits(self, x: Array) -> Array:
        logits = self.target_embedding.attend(x) if self.config.tie_output else self.output(x)
        if self.config.final_logits_bias:
            logits = logits + self.logits_bias.astype(logits.dtype)
        return logits.astype(jnp.float32)

    def _check_length(self, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds model max_len={self.config.max_len}")
