"""The training state: a pytree of step, parameters and optimizer state."""

from __future__ import annotations

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params))


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam(W) from `config.optimizer`, with optional global-norm clipping."""
    opt = config.optimizer
    if opt.name == "adam":
        tx = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "adamw":
        tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (adam, adamw)")
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx
