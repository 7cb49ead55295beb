"""Pure train and eval step functions, bound to a task's loss with functools.partial.

A task's `loss_fn(params, batch, rng, train) -> (loss, sums)` returns the scalar loss to
minimize and a dict of metric sums (see `losses.token_metrics`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ml_transformer.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, loss_fn: LossFn, tx: optax.GradientTransformation,
    unit: str, micro_batches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. Dropout noise depends only on (rng, step), so a resumed run
    draws the same noise as an uninterrupted one. With `micro_batches` k > 1 the batch is
    split into k interleaved slices whose gradients are accumulated in sequence, each
    weighted by its share of `unit` (tokens or examples): the update equals that of the
    whole batch at a k-th of the activation memory (dropout noise aside)."""
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.grad(lambda p, b, r: loss_fn(p, b, r, True), has_aux=True)
    if micro_batches == 1:
        grads, sums = grad_fn(state.params, batch, step_rng)
    else:
        def accumulate(carry, micro):
            index, micro_batch = micro
            grads, sums = grad_fn(state.params, micro_batch, jax.random.fold_in(step_rng, index))
            weighted = jax.tree.map(lambda g: g * sums[unit], grads)
            return jax.tree.map(jnp.add, carry, (weighted, sums)), None

        micro = jax.tree.map(lambda x: _interleave(x, micro_batches), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, step_rng))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(micro_batches), micro))
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums[unit], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = {**sums, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums


def _interleave(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] → [k, B/k, ...] with micro-batch j = rows j, j+k, ...: each device's rows
    are spread over every micro-batch, so no micro-batch leaves devices idle."""
    if x.shape[0] % k:
        raise ValueError(f"config.micro_batches={k} does not divide the batch of {x.shape[0]} rows")
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def eval_step(params, batch: dict, *, loss_fn: LossFn) -> dict[str, jax.Array]:
    """Metric sums of one batch, without dropout."""
    return loss_fn(params, batch, None, False)[1]
