"""The training loop, shared by every task.

A task provides: `unit` ('tokens' or 'examples'), `init_params(rng)`, `loss_fn(params,
batch, rng, train)`, `train_batches()` (a grain MapDataset whose item `step` is this
process's rows of the batch for that global step, always the same), and `evaluate(params, split, step)` returning (metrics, rows).
"""

from __future__ import annotations

import functools
import os

import grain
import jax
import numpy as np
from absl import logging

from ml_transformer.train import partitioning
from ml_transformer.train.checkpoints import Checkpoints, fit_params
from ml_transformer.train.losses import summarize
from ml_transformer.train.metric_writers import MetricWriter, Progress
from ml_transformer.train.schedules import make_schedule
from ml_transformer.train.state import TrainState, make_optimizer
from ml_transformer.train.steps import train_step


class NonFiniteLoss(RuntimeError):
    pass


def build_state(task, config, mesh):
    """(optimizer, abstract state with shardings, a function making the initial state)."""
    schedule = make_schedule(config)
    tx = make_optimizer(config, schedule)
    repl = partitioning.replicated(mesh)
    init = jax.jit(lambda rng: TrainState.create(task.init_params(rng), tx), out_shardings=repl)
    init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), jax.eval_shape(init, init_rng)
    )
    return tx, schedule, abstract, functools.partial(init, init_rng)


def restore_params(task, config, workdir: str, mesh, which: str = "latest"):
    """(step, parameters) of a saved checkpoint, for evaluation and prediction. Parameters
    saved with other shapes are fitted by the task's `resize_param` (e.g. ViT position
    embeddings at another image resolution); ValueError if they cannot be."""
    _, _, abstract, _ = build_state(task, config, mesh)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        step = checkpoints.resolve(which)
        saved = checkpoints.saved_layout(step, partitioning.replicated(mesh))
        if _shapes(saved["params"]) == _shapes(abstract.params):
            return step, checkpoints.restore(step, abstract)[0].params
        state, _ = checkpoints.restore(step, saved)
        return step, fit_params(state["params"], abstract.params, getattr(task, "resize_param", None))
    finally:
        checkpoints.close()


def _shapes(tree) -> list:
    return [(path, tuple(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(tree)]


def train(task, config, workdir: str, mesh) -> TrainState:
    """Trains to `config.total_steps`, resuming from the latest checkpoint in `workdir`."""
    tx, schedule, abstract, init = build_state(task, config, mesh)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is None:
        state, start = init(), 0
    else:
        fit_params(checkpoints.saved_layout(start, None)["params"], abstract.params)  # names a mismatch
        state, _ = checkpoints.restore(start, abstract)
        logging.info("Resumed from the checkpoint at step %d", start)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("Model: %s parameters", f"{num_params:,}")

    repl, data = partitioning.replicated(mesh), partitioning.data_sharded(mesh)
    step_fn = jax.jit(
        functools.partial(train_step, loss_fn=task.loss_fn, tx=tx),
        in_shardings=(repl, data, repl),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    writer = MetricWriter(workdir)
    progress = Progress(start, config.total_steps, task.unit)
    pending: list[dict] = []
    step = start
    batches = iter(task.train_batches()[start:].to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))
    try:
        while step < config.total_steps:
            batch = partitioning.to_global(next(batches), mesh)
            state, sums = step_fn(state, batch, dropout_rng)
            pending.append(sums)
            step += 1
            last = step == config.total_steps
            if last or any(step % n == 0 for n in (config.log_every_steps, config.checkpoint_every_steps)):
                _log_train(writer, progress, pending, step, float(schedule(step - 1)))
                pending = []
            if step % config.eval_every_steps == 0 or last:
                metrics, _ = task.evaluate(state.params, "validation", step)
                writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
                progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                progress.reset_clock()
            if step % config.checkpoint_every_steps == 0 or last:
                checkpoints.save(step, state, {"step": step})
                progress.reset_clock()
    finally:
        progress.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    return state


def _log_train(writer: MetricWriter, progress: Progress, pending: list[dict], step: int, lr: float) -> None:
    sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(pending))
    metrics = summarize(sums, progress.unit)
    if not np.isfinite(metrics["loss"]):
        raise NonFiniteLoss(f"non-finite training loss {metrics['loss']} at step {step}")
    rate = progress.update(step, metrics["loss"], sums[progress.unit])
    metrics = {
        **metrics,
        "grad_norm": sums["grad_norm"] / len(pending),
        "learning_rate": lr,
        f"{progress.unit}_per_second": rate,
    }
    writer.write(step, {f"train/{k}": v for k, v in metrics.items()})

