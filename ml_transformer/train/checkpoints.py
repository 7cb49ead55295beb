"""Orbax checkpoints of the training state, with a little JSON metadata per step.

`DIR/checkpoints/` holds the rolling set (the last `keep_checkpoints`); `DIR/checkpoints/best/`
holds, apart from it, the state that scored best on `config.best_metric` at an evaluation.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

BEST = "best"
LOWER_IS_BETTER = ("loss", "nll", "perplexity", "bits_per_char")

# Fits a restored parameter to a model's shape: (name, value, shape) -> value, or None if it cannot.
Resize = Callable[[str, Any, tuple], Any]


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, handler, args in (("state", ocp.StandardCheckpointHandler, (ocp.args.StandardSave, ocp.args.StandardRestore)),
                                ("meta", ocp.JsonCheckpointHandler, (ocp.args.JsonSave, ocp.args.JsonRestore))):
        for arg in args:
            registry.add(item, arg, handler)
    return registry


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved; the ones saved before it are intact."""


def _cause(error: BaseException) -> str:
    """The innermost cause of an error, in one line (e.g. 'No space left on device')."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    if code := re.search(r"os_error_code='?(\d+)", text):  # TensorStore's report of a failed system call
        return os.strerror(int(code.group(1)))
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Checkpoints:
    """Rolling checkpoints (keep the last `keep`) under `directory`, written asynchronously
    by a single process; several processes write synchronously, as the background commit
    of an asynchronous save could wait forever on a process busy in a collective. A save
    is written to a temporary folder and renamed when complete; a writer (`write`, the run
    that holds the workdir) removes the temporary folders of saves that never completed
    when it opens the checkpoints. Without `write` (evaluation, prediction) nothing on disk
    is changed: the folder is not even created."""

    def __init__(self, directory: str, keep: int = 3, *, write: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=write, cleanup_tmp_directories=write,
                                               enable_async_checkpointing=jax.process_count() == 1)
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=options,
            handler_registry=_registry(),
        )
        self._saving: int | None = None  # the step of a save that may still run in the background

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict | None = None) -> None:
        """Starts saving `state` as checkpoint `step` (in the background when asynchronous).
        CheckpointError if this save, or one still running, fails."""
        self.wait()
        with self._failure(step):
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
            )
        self._saving = step

    def check(self) -> None:
        """CheckpointError, naming the checkpoint and the cause, if a save that was running
        in the background has failed."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    @contextlib.contextmanager
    def _failure(self, step: int):
        try:
            yield
        except Exception as e:  # noqa: BLE001 - whatever failed, the checkpoint is not saved
            self._saving = None
            path = os.path.join(os.fspath(self.manager.directory), str(step))
            raise CheckpointError(f"saving checkpoint {path} failed ({_cause(e)}); the checkpoints saved "
                                  "before it are intact and the next start resumes from the latest") from e

    def restore(self, step: int, abstract_state):
        """The state saved at `step`, laid out like `abstract_state` (shapes, dtypes, shardings)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored.state, restored.meta

    def saved_layout(self, step: int, sharding) -> Any:
        """Shapes and dtypes of the state saved at `step` (nested dicts and lists of
        ShapeDtypeStruct with `sharding`): a target that restores it as it was saved."""
        tree = self.manager.item_metadata(step)["state"]
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)

    def set_aside(self, step: int) -> str:
        """Moves the checkpoint at `step` out of the rolling set, to `unreadable-<step>`
        beside it (kept for inspection); returns its new path."""
        self.manager.wait_until_finished()
        directory = os.fspath(self.manager.directory)
        path = os.path.join(directory, f"unreadable-{step}")
        if jax.process_index() == 0:
            os.replace(os.path.join(directory, str(step)), path)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()
        return path

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def resolve(self, which: str) -> int:
        """'latest' or a step number → an existing step; ValueError naming what is missing."""
        steps = self.steps()
        if not steps:
            raise ValueError(f"no checkpoints in {self.manager.directory}")
        if which == "latest":
            return max(steps)
        if not which.isdigit() or int(which) not in steps:
            raise ValueError(f"--checkpoint={which}: not one of latest, best, avg:N, all or the saved steps {sorted(steps)}")
        return int(which)

    def wait(self) -> None:
        """Waits for a save running in the background; CheckpointError if it fails."""
        if self._saving is not None:
            with self._failure(self._saving):
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
            self._saving = None

    def close(self) -> None:
        """Waits for a save running in the background (CheckpointError if it fails), then closes."""
        try:
            self.wait()
        finally:
            self.manager.close()


class BestCheckpoint:
    """The state that scored best on `metric` (lower is better for LOWER_IS_BETTER, higher
    otherwise) among the evaluations offered, in its own folder; survives resumption."""

    def __init__(self, directory: str, metric: str):
        self.metric, self.store = metric, Checkpoints(directory, keep=1, write=True)
        step = self.store.latest_step()
        self.value = None if step is None else self.store.meta(step)[metric]

    def offer(self, step: int, state, metrics: dict) -> bool:
        """Saves `state` if `metrics[metric]` beats the best so far; True if it did."""
        if self.metric not in metrics:
            raise ValueError(f"config.best_metric={self.metric}: not one of the eval metrics {sorted(metrics)}")
        value = float(metrics[self.metric])
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        if self.value is not None and sign * value <= sign * self.value:
            return False
        self.store.save(step, state, {"step": step, self.metric: value})
        self.value = value
        return True

    def check(self) -> None:
        """CheckpointError if the last save has failed (`Checkpoints.check`)."""
        self.store.check()

    def close(self) -> None:
        self.store.close()


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def fit_params(restored, target, resize: Resize | None = None):
    """`restored` parameters laid out as `target` (arrays or shape structs): the names
    must be the same; a parameter whose shape differs is passed through `resize` (e.g.
    ViT position embeddings at another resolution). Otherwise ValueError naming the
    parameter and both shapes."""
    flat_restored = dict(jax.tree_util.tree_leaves_with_path(restored))
    flat_target = dict(jax.tree_util.tree_leaves_with_path(target))
    if flat_restored.keys() != flat_target.keys():
        differ = sorted(map(_name, flat_restored.keys() ^ flat_target.keys()))
        raise ValueError(f"checkpoint and model parameters differ in names: {', '.join(differ)}")
    fitted = []
    for path, want in flat_target.items():
        value, shape = flat_restored[path], tuple(np.shape(want))
        if tuple(np.shape(value)) != shape:
            resized = resize(_name(path), value, shape) if resize else None
            if resized is None:
                raise ValueError(f"parameter {_name(path)}: checkpoint shape {tuple(np.shape(value))}, model shape {shape}")
            value = resized
        fitted.append(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), fitted)
