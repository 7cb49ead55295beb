"""The training state (a pytree of step, parameters and optimizer state), its optimizer,
and how it is built and sharded over a mesh."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import optax

from ml_transformer import sharding
from ml_transformer.train.schedules import make_schedule


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


def build_state(task, config, mesh):
    """(optimizer, its schedule, the abstract state with its shardings over `mesh`, a
    function making the initial state)."""
    schedule = make_schedule(config)
    tx = make_optimizer(config, schedule)
    create = lambda rng: TrainState.create(task.init_params(rng), tx)  # noqa: E731
    init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    shapes = jax.eval_shape(create, init_rng)
    shardings = sharding.state_shardings(shapes, mesh)
    init = jax.jit(create, out_shardings=shardings)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return tx, schedule, abstract, functools.partial(init, init_rng)
