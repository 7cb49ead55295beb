"""Token-level losses and metrics that ignore padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Per-token cross-entropy against targets smoothed by `smoothing` (paper §5.4).

    The smoothed target puts 1 - smoothing on the label and spreads `smoothing` over the
    other V - 1 tokens. The constant entropy of that target is subtracted, so a perfect
    prediction of the smoothed target scores 0.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - smoothing
    low = smoothing / (vocab - 1)
    targets = jax.nn.one_hot(labels, vocab) * (confidence - low) + low
    floor = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20)) if smoothing else 0.0
    return optax.softmax_cross_entropy(logits, targets) - floor


def token_metrics(logits: jax.Array, labels: jax.Array, smoothing: float) -> dict[str, jax.Array]:
    """Sums over real (non-pad, label > 0) tokens: smoothed loss, NLL, correct, count."""
    weights = (labels > 0).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss = smoothed_cross_entropy(logits, labels, smoothing) if smoothing else nll
    return {
        "loss_sum": jnp.sum(loss * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
        "tokens": jnp.sum(weights),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Per-token means from accumulated sums: loss, nll, perplexity, accuracy."""
    tokens = max(float(sums["tokens"]), 1.0)
    nll = float(sums["nll_sum"]) / tokens
    return {
        "loss": float(sums["loss_sum"]) / tokens,
        "nll": nll,
        "perplexity": float(jnp.exp(min(nll, 50.0))),
        "accuracy": float(sums["correct"]) / tokens,
    }
