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
    logits = logits.astype(jnp.float32)
    weights = (labels > 0).astype(jnp.float32)
    # log p_v = logits_v - lse: reductions over the vocabulary, no [.., V] array of log-probabilities.
    lse = jax.nn.logsumexp(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = lse - label_logit
    if smoothing:
        confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
        # -Σ_v target_v log p_v with target = low everywhere plus (confidence - low) on the label.
        loss = (confidence - low) * nll - low * (jnp.sum(logits, axis=-1) - vocab * lse)
        loss -= -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low))
    else:
        loss = nll
    correct = label_logit >= jnp.max(logits, axis=-1)  # argmax, ties aside
    return {
        "loss_sum": jnp.sum(loss * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct": jnp.sum(correct * weights),
        "tokens": jnp.sum(weights),
    }


def summarize(sums: dict[str, float], unit: str = "tokens") -> dict[str, float]:
    """Means per `unit` (the count key: 'tokens' or 'examples') from accumulated sums:
    each `<name>_sum` becomes `<name>`, `correct` becomes `accuracy`, and `nll` adds
    `perplexity`."""
    count = max(float(sums[unit]), 1.0)
    out = {key[: -len("_sum")]: float(value) / count for key, value in sums.items() if key.endswith("_sum")}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / count
    if "nll" in out:
        out["perplexity"] = float(np.exp(min(out["nll"], 50.0)))
    return out
