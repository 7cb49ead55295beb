"""Token-level losses and metrics that ignore padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def token_metrics(logits: jax.Array, labels: jax.Array, smoothing: float) -> dict[str, jax.Array]:
    """Sums over real (non-pad, label > 0) tokens: loss, NLL, correct predictions, count.

    The loss is cross-entropy against targets smoothed by `smoothing` (paper §5.4): 1 -
    smoothing on the label, `smoothing` spread over the other V - 1 tokens, minus that
    target's constant entropy so that predicting it exactly scores 0. One log-softmax
    serves loss and NLL.
    """
    vocab = logits.shape[-1]
    weights = (labels > 0).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    if smoothing:
        confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
        # -Σ_v target_v log p_v with target = low everywhere plus (confidence - low) on the label.
        loss = (confidence - low) * nll - low * jnp.sum(log_probs, axis=-1)
        loss -= -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low))
    else:
        loss = nll
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
