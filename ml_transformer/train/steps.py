"""Pure train and eval step functions, bound to a task's loss with functools.partial.

A task's `loss_fn(params, batch, rng, train) -> (loss, sums)` returns the scalar loss to
minimize and a dict of metric sums (see `losses.token_metrics`).
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from ml_transformer.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, loss_fn: LossFn, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. Dropout noise depends only on (rng, step), so a resumed run
    draws the same noise as an uninterrupted one."""
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.grad(lambda p: loss_fn(p, batch, step_rng, True), has_aux=True)
    grads, sums = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = {**sums, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums


def eval_step(params, batch: dict, *, loss_fn: LossFn) -> dict[str, jax.Array]:
    """Metric sums of one batch, without dropout."""
    return loss_fn(params, batch, None, False)[1]
