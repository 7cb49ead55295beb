"""Learning-rate schedules with warmup, built from optax pieces."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def transformer_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """The paper's §5.3 rate, `scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)`.

    `step` counts from 1 (optax's update count + 1): linear warmup to the peak
    `d_model^-0.5 · warmup^-0.5` at step `warmup`, then inverse square-root decay.
    """
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    peak = scale * d_model**-0.5 * warmup_steps**-0.5
    # Each piece is a product, not optax.linear_schedule's difference, to stay exact in float32.
    warmup = lambda count: peak * (count + 1) / warmup_steps  # noqa: E731
    decay = lambda count: peak * jnp.sqrt(warmup_steps / (count + warmup_steps))  # noqa: E731
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps - 1])


def warmup_cosine_schedule(peak: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.0):
    """Linear warmup from 0 to `peak`, then cosine decay to `end_fraction · peak`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak * end_fraction,
    )


def make_schedule(config) -> optax.Schedule:
    """The schedule named by `config.schedule` ('transformer' or 'cosine')."""
    opt = config.optimizer
    if opt.schedule == "transformer":
        return transformer_schedule(config.model.d_model, opt.warmup_steps, opt.learning_rate)
    if opt.schedule == "cosine":
        return warmup_cosine_schedule(opt.learning_rate, opt.warmup_steps, config.total_steps)
    raise ValueError(f"config.optimizer.schedule: unknown schedule {opt.schedule!r} (transformer, cosine)")
