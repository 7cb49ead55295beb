"""The training loop, shared by every task.

Tasks are `tasks.base.Task`s; the loop imports none of them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from typing import Iterator

import grain
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ml_transformer import interop, onednn, sharding
from ml_transformer.train import restore, throughput
from ml_transformer.train.checkpoints import BestCheckpoint, Checkpoints, fit_params
from ml_transformer.train.losses import summarize
from ml_transformer.train.metric_writers import MetricWriter, Progress
from ml_transformer.train.state import TrainState, build_state
from ml_transformer.train.steps import train_step
from ml_transformer.workdir import save_config


class NonFiniteLoss(RuntimeError):
    pass


def compile_train_step(task, config, mesh, tx, abstract) -> throughput.CompiledPerShape:
    """The train step over `mesh`, compiled once per batch shape; the state is donated."""
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
    step = functools.partial(train_step, loss_fn=task.loss_fn, tx=tx, unit=task.unit)
    jitted = onednn.jit(functools.partial(step, micro_batches=config.micro_batches), devices=list(mesh.devices.flat),
                        in_shardings=(shardings, data, repl), out_shardings=(shardings, repl), donate_argnums=0)
    # Gradient accumulation loops over micro-batches: its FLOPs are counted on the whole batch at once.
    return throughput.CompiledPerShape(jitted, mesh.size, jax.jit(step) if config.micro_batches > 1 else None)


def read_ahead(task, start: int, mesh) -> Iterator[dict]:
    """The global batches of steps `start`, `start + 1`, ...: a thread reads the next ones
    while the devices compute."""
    batches = task.train_batches()[start:].to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
    return (sharding.to_global(batch, mesh) for batch in batches)


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the next start resumes."""


def train(task, config, workdir: str, mesh, profile_steps: tuple[int, int] | None = None) -> TrainState:
    """Trains to `config.total_steps`, resuming from the latest readable checkpoint in
    `workdir`, which then gets the run's config.json. SIGTERM or Ctrl-C saves a checkpoint
    at the end of the current step and raises Preempted; a failed save raises
    CheckpointError at once; `profile_steps` (A, B) writes a JAX profiler trace of steps A..B-1 to `DIR/profile`."""
    tx, schedule, abstract, init = build_state(task, config, mesh)
    checkpoints = restore.rolling(config, workdir, write=True)
    best = BestCheckpoint(restore.best_directory(workdir), config.best_metric)
    state, start = _resume(checkpoints, abstract)
    if state is None:
        state, start = init(), 0
        pretrained = interop.hf_path(config.get("init_from"))
        if pretrained:
            state = state.replace(params=restore.pretrained_params(pretrained, abstract.params, state.params))
    if jax.process_index() == 0:  # only now: a refused resume leaves config.json as it was
        save_config(workdir, config)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("Model: %s parameters", f"{num_params:,}")

    step_fn = compile_train_step(task, config, mesh, tx, abstract)
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    writer = MetricWriter(workdir)
    peak, peak_source = throughput.peak_flops(list(mesh.devices.flat))
    logging.info("Peak FLOP/s for MFU: %.4g (%s)", peak, peak_source)
    progress = Progress(start, config.total_steps, task.unit, peak)
    pending: list[dict] = []
    # Losses are checked for finite values when logged: always before anything is saved.
    logged_every = (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps)
    step = start
    batches = iter(()) if start == config.total_steps else read_ahead(task, start, mesh)  # a finished run reads none
    try:
        with StopRequest() as stop, _Profile(workdir, profile_steps) as profile:
            while step < config.total_steps:
                profile.at(step)
                state, sums, flops = step_fn(state, next(batches), dropout_rng)
                pending.append({**sums, "flops": flops})
                checkpoints.check()
                best.check()
                step += 1
                last = step == config.total_steps
                preempted = stop.requested(step)
                if last or preempted or any(step % n == 0 for n in logged_every):
                    _log_train(writer, progress, pending, step, float(schedule(step - 1)))
                    pending = []
                if step % config.eval_every_steps == 0 or last:
                    metrics, _ = task.evaluate(state.params, "validation", step)
                    writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
                    progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                    best.offer(step, state, metrics)
                    progress.reset_clock()
                if step % config.checkpoint_every_steps == 0 or last or preempted:
                    checkpoints.save(step, state, {"step": step})
                    progress.reset_clock()
                if preempted:
                    raise Preempted(f"stopped by {stop.signal_name or 'SIGTERM'} after step {step}, saved a "
                                    "checkpoint; the next start resumes")
    except BaseException:  # the first failure is the one reported: closing ignores later ones
        _close(progress, checkpoints, best, writer, quietly=True)
        raise
    _close(progress, checkpoints, best, writer)
    return state


def _close(*closables, quietly: bool = False) -> None:
    """Closes each (checkpoint stores wait for their saves); `quietly` ignores their errors."""
    for closable in closables:
        with contextlib.suppress(Exception) if quietly else contextlib.nullcontext():
            closable.close()


def _resume(checkpoints: Checkpoints, abstract) -> tuple[TrainState | None, int]:
    """The latest readable checkpoint's state and step, or (None, 0) when there is none.
    A checkpoint that cannot be read is set aside with a warning and the one before it
    tried; a checkpoint of a model with other shapes is a ValueError naming the parameter."""
    for step in sorted(checkpoints.steps(), reverse=True):
        try:
            saved = checkpoints.saved_layout(step, None)
        except Exception as e:  # noqa: BLE001 - any failure to read means the same: unusable
            _set_aside(checkpoints, step, e)
            continue
        fit_params(saved["params"], abstract.params)  # a mismatch is the config's fault: raise
        try:
            state, _ = checkpoints.restore(step, abstract)
        except Exception as e:  # noqa: BLE001
            _set_aside(checkpoints, step, e)
            continue
        logging.info("Resumed from the checkpoint at step %d", step)
        return state, step
    return None, 0


def _set_aside(checkpoints: Checkpoints, step: int, error: Exception) -> None:
    path = checkpoints.set_aside(step)
    logging.warning("The checkpoint at step %d cannot be read (%s: %s); moved it to %s and trying the one before",
                    step, type(error).__name__, str(error).splitlines()[0] if str(error) else "", path)


class StopRequest:
    """SIGTERM or Ctrl-C (SIGINT) → stop at the end of the current step; a second Ctrl-C
    exits at once (a checkpoint being written is then left incomplete, in a temporary folder
    that the next start removes). With many processes JAX's preemption service (which
    handles SIGTERM itself) makes them agree on the step; Ctrl-C is passed on to it."""

    def __enter__(self):
        self.signal_name = None
        self.multiprocess = jax.process_count() > 1
        self.previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._interrupt)}
        if not self.multiprocess:
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def _interrupt(self, signum, frame):
        if self.signal_name == "SIGINT":
            os.write(2, b"\nerror: interrupted twice: exited at once; the checkpoints saved before are intact\n")
            os._exit(128 + signal.SIGINT)
        self.signal_name = "SIGINT"
        os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to exit at once)\n")
        if self.multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        if self.multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal_name is not None

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _Profile:
    """A JAX profiler trace of steps [A, B) into `DIR/profile` (TensorBoard's profile tab)."""

    def __init__(self, workdir: str, steps: tuple[int, int] | None):
        self.directory, self.steps, self.running = os.path.join(workdir, "profile"), steps, False

    def __enter__(self):
        return self

    def at(self, step: int) -> None:
        if self.steps and step == self.steps[0]:
            jax.profiler.start_trace(self.directory)
            self.running = True
        elif self.running and step == self.steps[1]:
            self._stop()

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.running = False
        logging.info("Wrote a profiler trace of steps %d-%d to %s", self.steps[0], self.steps[1] - 1, self.directory)

    def __exit__(self, *exc):
        if self.running:
            self._stop()


def _log_train(writer: MetricWriter, progress: Progress, pending: list[dict], step: int, lr: float) -> None:
    pending = jax.device_get(pending)
    for n, sums in enumerate(pending):
        if not np.isfinite(sums["loss_sum"]):
            raise NonFiniteLoss(f"non-finite training loss at step {step - len(pending) + n + 1}; "
                                "the checkpoints saved before it are intact")
    sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *pending)
    metrics = summarize(sums, progress.unit)
    rate, mfu = progress.update(step, metrics["loss"], sums[progress.unit], sums["flops"])
    metrics = {
        **metrics,
        "grad_norm": sums["grad_norm"] / len(pending),
        "learning_rate": lr,
        f"{progress.unit}_per_second": rate,
        "mfu": mfu,
    }
    writer.write(step, {f"train/{k}": v for k, v in metrics.items()})

