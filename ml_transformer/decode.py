"""Autoregressive decoding: greedy search, beam search with a length penalty, sampling.

Every search drives a model through a step function

    step_fn(tokens: int32[N, 1], state) -> (logits: float[N, V], new_state)

where `tokens` is the previous token of each sequence (`bos_id` on the first call: one
id, or for greedy search and sampling int32[B], e.g. the last token of each prompt) and
`state` is any pytree, e.g. a KV cache with the encoder outputs and source mask. Leaves
with ndim >= 1 have the batch as leading dimension; leaves with ndim 0 (such as a cache
write position) are shared by the whole batch and only `step_fn` changes them. Beam
search runs `step_fn` on `batch_size * beam_size` rows: beam k of example b is row
b * beam_size + k.

Outputs exclude BOS, include EOS and hold the pad id 0 after it. Length limits: a
sequence of example b holds at most `min(max_lens[b], max_len)` tokens, EOS included
(`max_lens` is clipped to [1, max_len]). A sequence still unfinished at its last allowed
position gets EOS there, so every output ends with EOS; beam search scores that EOS with
the model's own probability. `min_len` forbids EOS before that many tokens (at most
limit - 1): with `min_len=1` no output is empty, which a weakly trained model would
otherwise often prefer under beam search. Every search is traceable inside one
`jax.jit`, with `batch_size`, `beam_size`, `max_len`, `min_len`, `eos_id`, `penalty`,
`temperature`, `top_k` and `top_p` static Python values.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any], tuple[Array, Any]]

PAD_ID = 0


def _length_limits(batch_size: int, max_len: int, max_lens: Array | None) -> Array:
    """Per-example maximum number of output tokens, EOS included: int32[B]."""
    if max_lens is None:
        return jnp.full((batch_size,), max_len, jnp.int32)
    return jnp.clip(jnp.asarray(max_lens, jnp.int32), 1, max_len)


def _forbid_early_eos(logits: Array, i: Array, limits: Array, min_len: int, eos_id: int) -> Array:
    """`logits` [N, V] at output position `i` with EOS at -inf where `i < min(min_len,
    limit - 1)`; `limits` [N'] repeats over the rows when N is a multiple of N'."""
    if min_len <= 0:
        return logits
    early = i < jnp.minimum(min_len, limits - 1)
    early = jnp.repeat(early, logits.shape[0] // early.shape[0])
    return logits.at[:, eos_id].set(jnp.where(early, -jnp.inf, logits[:, eos_id]))


def _decode(step_fn: StepFn, state: Any, select: Callable, rng: Array | None, *,
            batch_size: int, max_len: int, min_len: int, bos_id: int, eos_id: int,
            max_lens: Array | None) -> Array:
    """Extends each sequence by `select(logits, keys)` until every one has ended; `rng`
    holds one key per sequence, folded with the position at each step."""
    limits = _length_limits(batch_size, max_len, max_lens)

    def cond(carry):
        i, _, _, finished, _ = carry
        return (i < max_len) & ~jnp.all(finished)

    def body(carry):
        i, tokens, prev, finished, state = carry
        logits, state = step_fn(prev[:, None], state)
        keys = None if rng is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, i)
        logits = _forbid_early_eos(logits.astype(jnp.float32), i, limits, min_len, eos_id)
        token = select(logits, keys).astype(jnp.int32)
        token = jnp.where(i + 1 >= limits, eos_id, token)
        token = jnp.where(finished, PAD_ID, token)
        tokens = tokens.at[:, i].set(token)
        return i + 1, tokens, token, finished | (token == eos_id), state

    carry = (
        jnp.int32(0),
        jnp.zeros((batch_size, max_len), jnp.int32),
        jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (batch_size,)),
        jnp.zeros((batch_size,), bool),
        state,
    )
    return jax.lax.while_loop(cond, body, carry)[1]


def argmax(logits: Array) -> Array:
    """`jnp.argmax` over the last axis (the first index on ties) through `lax.top_k`, which
    XLA:CPU runs about 3x faster than argmax's variadic reduction: 0.27 against 0.77 ms
    for 64 x 4,000 logits, the reduction taking 8% of a greedy decoding step."""
    return jax.lax.top_k(logits, 1)[1][..., 0]


def greedy_search(step_fn: StepFn, state: Any, *, batch_size: int, max_len: int,
                  bos_id: int, eos_id: int, max_lens: Array | None = None,
                  min_len: int = 0) -> Array:
    """Argmax decoding: int32[batch_size, max_len]; stops once every sequence has ended."""
    return _decode(step_fn, state, lambda logits, _: argmax(logits), None,
                   batch_size=batch_size, max_len=max_len, min_len=min_len, bos_id=bos_id,
                   eos_id=eos_id, max_lens=max_lens)


def _sampler(temperature: float, top_k: int, top_p: float) -> Callable:
    """`select(logits [N, V], keys [N]) -> tokens [N]` drawing each row from its tempered,
    filtered distribution with its own key."""
    draw = jax.vmap(jax.random.categorical)

    def select(logits, keys):
        if temperature == 0:
            return argmax(logits)
        logits = logits / temperature
        if top_k == 0 and top_p == 1:
            return draw(keys, logits)
        k = logits.shape[-1] if top_k == 0 else min(top_k, logits.shape[-1])
        logits, candidates = jax.lax.top_k(logits, k)
        if top_p < 1:
            probs = jax.nn.softmax(logits, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            logits = jnp.where(mass_before < top_p, logits, -jnp.inf)
        return jnp.take_along_axis(candidates, draw(keys, logits)[:, None], axis=-1)[:, 0]

    return select


def sample(step_fn: StepFn, state: Any, rng: Array, *, batch_size: int, max_len: int,
           bos_id: int, eos_id: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, max_lens: Array | None = None, min_len: int = 0) -> Array:
    """Ancestral sampling: int32[batch_size, max_len]; stops once every sequence has ended.

    Logits are divided by `temperature` (0 means argmax). `top_k > 0` keeps the k most
    likely tokens; `top_p < 1` then keeps the fewest most likely tokens whose probability
    (renormalised after top-k) reaches `top_p`. `rng` is one key, or one key per sequence
    `[batch_size]`: a sequence's samples then depend only on its key and its own logits,
    so that it draws the same in any batch. The same `rng` gives the same samples.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if jnp.ndim(rng) == 0:
        rng = jax.random.split(rng, batch_size)
    return _decode(step_fn, state, _sampler(temperature, top_k, top_p), rng,
                   batch_size=batch_size, max_len=max_len, min_len=min_len, bos_id=bos_id,
                   eos_id=eos_id, max_lens=max_lens)


def expand_to_beams(tree: Any, beam_size: int) -> Any:
    """Repeats the rows of every leaf with ndim >= 1: row b becomes rows
    b * beam_size ... (b + 1) * beam_size - 1. Leaves with ndim 0 are left as they are."""
    return jax.tree.map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0), tree)


def gather_beams(tree: Any, beam_indices: Array) -> Any:
    """Reorders beams: `beam_indices` int32[B, K'] picks, per example, K' of its K beams.

    A leaf with B * K rows (beam-major) becomes one with B * K' rows, whose row
    b * K' + j is the old row b * K + beam_indices[b, j]. Leaves with ndim 0 are left
    as they are.
    """
    batch_size = beam_indices.shape[0]

    def gather(x):
        if jnp.ndim(x) == 0:
            return x
        old_beams = x.shape[0] // batch_size
        rows = jnp.arange(batch_size)[:, None] * old_beams + beam_indices
        return jnp.take(x, rows.reshape(-1), axis=0)

    return jax.tree.map(gather, tree)


PENALTIES = ("gnmt", "power")


def length_penalty(length: Array | int, alpha: Array | float, form: str = "gnmt") -> Array:
    """The length penalty that beam search divides a log-probability by: 'gnmt'
    ((5 + length) / 6) ** alpha (Wu et al., 2016), or 'power' length ** alpha (the form of
    Hugging Face transformers' `length_penalty`, stronger at the same alpha)."""
    length = jnp.asarray(length, jnp.float32)
    if form == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if form == "power":
        return length ** alpha
    raise ValueError(f"length penalty {form!r}: not one of {', '.join(PENALTIES)}")


def beam_search(step_fn: StepFn, state: Any, *, batch_size: int, beam_size: int,
                alpha: Array | float, max_len: int, bos_id: int, eos_id: int,
                max_lens: Array | None = None, min_len: int = 0,
                penalty: str = "gnmt", reorder: Callable[[Any, Array], Any] | None = None
                ) -> tuple[Array, Array]:
    """Beam search with a length penalty (`length_penalty` of form `penalty`).

    A finished hypothesis Y (EOS counted in |Y|) scores log P(Y) / length_penalty(|Y|).
    Each step extends the `beam_size` alive hypotheses: their best `beam_size` non-EOS
    extensions stay alive, and their EOS extensions join the finished ones, of which the
    best `beam_size` are kept. An example is settled once no alive hypothesis can beat
    its worst kept finished one: log-probabilities only decrease, so an alive hypothesis
    with log-probability L <= 0 and n tokens ends with a score of at most
    L / max(length_penalty(n + 1), length_penalty(limit)), the penalty being monotone in
    the length for any alpha >= 0. The loop ends when every example is settled.
    With beam_size 1 the alive hypothesis follows greedy search's path, and the result is
    greedy's output unless ending that path earlier with EOS scores higher.

    `state` has one row per example, repeated for its beams (`expand_to_beams`) and
    reordered with them (`gather_beams`) after each step; or, with `reorder`, it is already
    laid out for the beams and `reorder(state, beam_indices)` reorders it (e.g. a table of
    where each beam's cached keys are, leaving the cache itself in place).

    Returns (tokens int32[batch_size, beam_size, max_len], scores float32[batch_size,
    beam_size]), best first. Slots for which no hypothesis exists score -inf and hold
    only padding.
    """
    laid_out, reorder = reorder is not None, reorder or gather_beams
    limits = _length_limits(batch_size, max_len, max_lens)
    neg_inf = jnp.float32(-jnp.inf)
    lp = lambda length: length_penalty(length, alpha, penalty)  # noqa: E731

    def cond(carry):
        i, _, alive_logp, _, finished_scores, _ = carry
        best_reachable = jnp.max(alive_logp, axis=1) / jnp.maximum(lp(i + 1), lp(limits))
        settled = best_reachable <= jnp.min(finished_scores, axis=1)
        return (i < max_len) & ~jnp.all(settled)

    def body(carry):
        i, alive_seqs, alive_logp, finished_seqs, finished_scores, state = carry
        prev = jnp.where(i == 0, bos_id, alive_seqs[:, :, jnp.maximum(i - 1, 0)])
        logits, state = step_fn(prev.reshape(batch_size * beam_size, 1), state)
        vocab_size = logits.shape[-1]
        logits = _forbid_early_eos(logits.astype(jnp.float32), i, limits, min_len, eos_id)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        extended = alive_logp[:, :, None] + logprobs.reshape(batch_size, beam_size, vocab_size)

        ended_scores = extended[:, :, eos_id] / lp(i + 1)
        ended_seqs = alive_seqs.at[:, :, i].set(eos_id)
        finished_scores, best = jax.lax.top_k(
            jnp.concatenate([finished_scores, ended_scores], axis=1), beam_size)
        finished_seqs = jnp.take_along_axis(
            jnp.concatenate([finished_seqs, ended_seqs], axis=1), best[:, :, None], axis=1)

        is_eos = jnp.arange(vocab_size) == eos_id
        at_limit = i + 1 >= limits
        growing = jnp.where(is_eos[None, None, :] | at_limit[:, None, None], neg_inf, extended)
        alive_logp, flat = jax.lax.top_k(growing.reshape(batch_size, -1), beam_size)
        origin, token = flat // vocab_size, flat % vocab_size
        alive_seqs = jnp.take_along_axis(alive_seqs, origin[:, :, None], axis=1)
        alive_seqs = alive_seqs.at[:, :, i].set(token)
        state = reorder(state, origin)
        return i + 1, alive_seqs, alive_logp, finished_seqs, finished_scores, state

    empty = jnp.zeros((batch_size, beam_size, max_len), jnp.int32)
    first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, neg_inf)
    carry = (
        jnp.int32(0),
        empty,
        jnp.tile(first_beam_only, (batch_size, 1)),
        empty,
        jnp.full((batch_size, beam_size), neg_inf),
        state if laid_out else expand_to_beams(state, beam_size),
    )
    _, _, _, finished_seqs, finished_scores, _ = jax.lax.while_loop(cond, body, carry)
    return finished_seqs, finished_scores
