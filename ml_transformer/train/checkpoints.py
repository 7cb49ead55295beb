"""Orbax checkpoints of the training state, with a little JSON metadata per step."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Asynchronous rolling checkpoints (keep the last `keep`) under `directory`."""

    def __init__(self, directory: str, keep: int = 3):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True),
        )

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict | None = None) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
        )

    def restore(self, step: int, abstract_state):
        """The state saved at `step`, laid out like `abstract_state` (shapes, dtypes, shardings)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored.state, restored.meta

    def resolve(self, which: str) -> int:
        """'latest' or a step number → an existing step; ValueError naming what is missing."""
        steps = self.steps()
        if not steps:
            raise ValueError(f"no checkpoints in {self.manager.directory}")
        if which == "latest":
            return max(steps)
        if not which.isdigit() or int(which) not in steps:
            raise ValueError(f"--checkpoint={which}: not one of latest or the saved steps {sorted(steps)}")
        return int(which)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree):
    """Shape/dtype/sharding skeleton of a pytree, the target for `restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
