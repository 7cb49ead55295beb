"""Parameters for evaluation, prediction and fine-tuning: from a run's checkpoints
('latest', a step, 'best', 'avg:N') or from a Hugging Face checkpoint folder."""

from __future__ import annotations

import contextlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from absl import logging

from ml_transformer import interop, sharding
from ml_transformer.train.checkpoints import BEST, Checkpoints, fit_params
from ml_transformer.train.state import build_state


class Restored(NamedTuple):
    step: int
    params: Any
    name: str  # names the checkpoint in result files: the step, or e.g. 'avg5-2400'


def rolling(config, workdir: str, write: bool = False) -> Checkpoints:
    """The run's rolling checkpoints (`config.keep_checkpoints` of them)."""
    return Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, write=write)


def best_directory(workdir: str) -> str:
    """Where the run keeps its best checkpoint."""
    return os.path.join(workdir, "checkpoints", BEST)


@contextlib.contextmanager
def _opened(config, workdir: str, best: bool = False):
    """The rolling checkpoints of a workdir, or its best checkpoint."""
    checkpoints = Checkpoints(best_directory(workdir), keep=1) if best else rolling(config, workdir)
    try:
        yield checkpoints
    finally:
        checkpoints.close()


def saved_checkpoints(config, workdir: str) -> list[str]:
    """The `--checkpoint` values of every saved checkpoint: its steps, and 'best'."""
    with _opened(config, workdir) as kept, _opened(config, workdir, best=True) as best:
        return [str(step) for step in sorted(kept.steps())] + ([BEST] if best.latest_step() is not None else [])


def restore_params(task, config, workdir: str, mesh, which: str = "latest") -> Restored:
    """Parameters of a saved checkpoint for evaluation and prediction. `which`: 'latest',
    a step, 'best' (best on `config.best_metric` at an evaluation) or 'avg:N' (the mean of
    the last N checkpoints' parameters). Parameters saved with other shapes are fitted by
    the task's `resize_param` (e.g. ViT position embeddings at another image resolution);
    ValueError if they cannot be. 'hf:PATH' reads a Hugging Face checkpoint folder, which
    must hold every parameter."""
    _, _, abstract, _ = build_state(task, config, mesh)
    pretrained = interop.hf_path(which)
    if pretrained:
        name = "hf-" + os.path.basename(os.path.normpath(pretrained))  # names its result files
        return Restored(0, pretrained_params(pretrained, abstract.params, None), name)
    resize = task.resize_param
    if which == BEST:
        with _opened(config, workdir, best=True) as best:
            step = best.latest_step()
            if step is None:
                raise ValueError(f"--checkpoint=best: no best checkpoint in {workdir} (saved at evaluations)")
            return Restored(step, _restore(best, step, abstract, mesh, resize), str(step))
    with _opened(config, workdir) as checkpoints:
        if which.startswith("avg:"):
            return _average(checkpoints, which, abstract, mesh, resize)
        step = checkpoints.resolve(which)
        return Restored(step, _restore(checkpoints, step, abstract, mesh, resize), str(step))


def _restore(checkpoints: Checkpoints, step: int, abstract, mesh, resize):
    saved = checkpoints.saved_layout(step, sharding.replicated(mesh))
    if _shapes(saved["params"]) == _shapes(abstract.params):
        return checkpoints.restore(step, abstract)[0].params
    state, _ = checkpoints.restore(step, saved)
    return fit_params(state["params"], abstract.params, resize)


def _average(checkpoints: Checkpoints, which: str, abstract, mesh, resize) -> Restored:
    count = which.partition(":")[2]
    steps = sorted(checkpoints.steps())
    if not count.isdigit() or not 1 <= int(count) <= len(steps):
        raise ValueError(f"--checkpoint={which}: N must be 1..{len(steps)}, the number of kept checkpoints")
    chosen = steps[-int(count):]
    total = None
    for step in chosen:
        params = _restore(checkpoints, step, abstract, mesh, resize)
        total = params if total is None else jax.tree.map(jnp.add, total, params)
    mean = jax.tree.map(lambda x: x / len(chosen), total)
    logging.info("Averaged the parameters of steps %s", chosen)
    return Restored(chosen[-1], mean, f"avg{len(chosen)}-{chosen[-1]}")


def pretrained_params(path: str, abstract_params, fresh_params):
    """Our parameters (sharded as `abstract_params`) from the checkpoint folder `path`; those
    it lacks are taken from `fresh_params` (or, if None, refused: ValueError). Prints what
    was loaded, newly initialized and left out."""
    checkpoint = interop.open_checkpoint(path)
    flat_abstract = interop.tensors.flat(abstract_params)
    loaded, left_out = interop.load_params(checkpoint, {k: v.shape for k, v in flat_abstract.items()})
    new = sorted(set(flat_abstract) - set(loaded))
    if new and fresh_params is None:
        raise ValueError(f"{checkpoint.source}: has no {', '.join(new)} for this model "
                         f"(to train them: --config.init_from={checkpoint.source})")
    if jax.process_index() == 0:
        values = sum(v.size for v in loaded.values())
        print(f"{checkpoint.source}: loaded {len(loaded)} parameters ({values:,} values) of a "
              f"{checkpoint.architecture}; newly initialized: {', '.join(new) or 'none'}; "
              f"left out: {', '.join(left_out) or 'none'}", flush=True)
    fresh = interop.tensors.flat(fresh_params) if new else {}
    params = {name: jax.make_array_from_callback(x.shape, x.sharding, lambda index, v=loaded[name]: v[index])
              if name in loaded else fresh[name] for name, x in flat_abstract.items()}
    return interop.tensors.nested(params)


def _shapes(tree) -> list:
    return [(path, tuple(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(tree)]
