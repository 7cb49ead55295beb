"""Sampling continuations of prompts from a decoder-only model, with the KV cache (or,
for benchmarks, recomputing the whole sequence at each step), and classifier-free guidance."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ml_transformer import decode, sharding
from ml_transformer.models.decoder_only import DecoderOnly

PROMPT_LENGTH_MULTIPLE = 16  # prompt batches are padded to a multiple of this: few compiled shapes


def left_padded(prompts: Sequence[np.ndarray], rows: int, width: int | None = None,
                max_width: int | None = None) -> np.ndarray:
    """int32 `[rows, width]` with each prompt right-aligned, padded with 0 on the left;
    `width` defaults to the longest prompt rounded up to `PROMPT_LENGTH_MULTIPLE`, at most
    `max_width`. Rows past the prompts hold a 1-token prompt repeating the first prompt's
    last token."""
    if width is None:
        longest = max(len(p) for p in prompts)
        width = -(-longest // PROMPT_LENGTH_MULTIPLE) * PROMPT_LENGTH_MULTIPLE
        width = width if max_width is None else min(width, max_width)
    out = np.zeros((rows, width), np.int32)
    for row, prompt in enumerate(prompts):
        out[row, width - len(prompt):] = prompt
    out[len(prompts):, -1] = prompts[0][-1]
    return out


def sample_tokens(model: DecoderOnly, params, prompts: jax.Array, rng: jax.Array, *, max_new_tokens: int,
                  eos_id: int, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  unconditional: jax.Array | None = None, guidance_scale: jax.Array | float = 1.0,
                  allowed: jax.Array | None = None, cached: bool = True) -> jax.Array:
    """Sampled continuations int32 `[B, max_new_tokens]` (EOS included, then padding; a
    continuation unfinished at the limit ends with EOS there) of left-padded `prompts`
    `[B, P]` (`decode.sample`'s temperature, top-k and top-p).

    `rng`: one key, or one per row (`decode.sample`). Classifier-free guidance: with
    `unconditional` prompts `[B, P]` (e.g. an empty caption) ending with the same token as
    `prompts` (e.g. the caption's end), the next-token logits are u + guidance_scale ·
    (c − u) from the conditional logits c and the unconditional ones u, the two sequences
    continuing with the same tokens.
    `allowed` bool `[V]` restricts the tokens sampled. `cached=False` runs the model over
    the whole sequence at every step instead of the KV cache (benchmarks).
    """
    variables = {"params": params}
    rows = prompts if unconditional is None else jnp.concatenate([prompts, unconditional])
    context, last = rows[:, :-1], prompts[:, -1]
    max_len = context.shape[1] + max_new_tokens
    if cached:
        state = model.apply(variables, context, max_len, method=DecoderOnly.prefill)

        def run(tokens, state):
            logits, *state = model.apply(variables, tokens, *state, method=DecoderOnly.decode_step)
            return logits, tuple(state)
    else:
        sequences = jnp.zeros((rows.shape[0], max_len), jnp.int32).at[:, :context.shape[1]].set(context)
        state = (sequences, jnp.int32(context.shape[1]))

        def run(tokens, state):
            sequences, index = state
            logits, sequences = model.apply(variables, tokens, sequences, index,
                                            method=DecoderOnly.decode_step_uncached)
            return logits, (sequences, index + 1)

    def step_fn(tokens, state):
        if unconditional is not None:
            tokens = jnp.concatenate([tokens, tokens])
        logits, state = run(tokens, state)
        if unconditional is not None:
            conditional, free = jnp.split(logits, 2)
            logits = free + guidance_scale * (conditional - free)
        if allowed is not None:
            logits = jnp.where(allowed, logits, -jnp.inf)
        return logits, state

    return decode.sample(step_fn, state, rng, batch_size=prompts.shape[0], max_len=max_new_tokens, bos_id=last,
                         eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p)


def row_keys(seed: int, first: int, count: int) -> jax.Array:
    """The sampling keys of rows `first` … `first + count - 1` of a run's prompts: a row's
    samples depend on the seed and its place only, not on how rows are batched."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), jnp.arange(first, first + count))


def sample_in_batches(sample, params, prompts: Sequence[np.ndarray], mesh, *, batch_size: int, batch_multiple: int,
                      seed: int, width: int | None = None, max_width: int | None = None,
                      unconditional: np.ndarray | None = None, **settings) -> list[np.ndarray]:
    """The output row (int32 `[max_new_tokens]`) of every prompt, in order: `sample` (a
    jitted `sample_tokens` with its model bound) over batches of at most `batch_size`
    prompts, left-padded (`left_padded`'s `width` and `max_width`), each process holding
    its rows; `unconditional` (one prompt, e.g. the empty caption) serves every row for
    guidance. Rows draw with `row_keys(seed, ...)`: the same seed, the same samples.
    Batches run side by side where that pays (`sharding.map_batches`)."""
    rows = sharding.padded_rows(min(len(prompts), batch_size), batch_multiple)

    def sampled(start: int) -> np.ndarray:
        chunk = prompts[start:start + rows]
        batch = {"prompts": left_padded(chunk, rows, width, max_width)}
        if unconditional is not None:
            batch["unconditional"] = left_padded([unconditional] * rows, rows, batch["prompts"].shape[1])
        batch = sharding.to_global({k: sharding.process_rows(v) for k, v in batch.items()}, mesh)
        tokens = sample(params, batch.pop("prompts"), row_keys(seed, start, rows), **batch, **settings)
        return sharding.all_rows(tokens)[: len(chunk)]

    return [row for block in sharding.map_batches(sampled, range(0, len(prompts), rows), mesh)
            for row in block]
