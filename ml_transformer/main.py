"""Runs an experiment in one of the modes of the run contract: train, eval, predict."""

from __future__ import annotations

import os
import sys

import jax
from absl import logging

from ml_transformer import evaluate
from ml_transformer.train import loop, partitioning
from ml_transformer.workdir import save_config

MODES = ("train", "eval", "predict", "attention")


def make_task(config, workdir: str, mesh):
    """The task named by `config.task`."""
    if config.task == "translation":
        from ml_transformer.tasks.translation import TranslationTask

        return TranslationTask(config, workdir, mesh)
    if config.task == "classification":
        from ml_transformer.tasks.classification import ClassificationTask

        return ClassificationTask(config, workdir, mesh)
    raise ValueError(f"config.task: unknown task {config.task!r} (translation, classification)")


def run(config, workdir: str, mode: str = "train", *, checkpoint: str = "latest", split: str = "test",
        input_path: str | None = None, layer: int = -1, head: int = -1) -> None:
    if mode not in MODES:
        raise ValueError(f"--mode={mode}: not one of {', '.join(MODES)}")
    os.makedirs(workdir, exist_ok=True)
    mesh = partitioning.make_mesh()
    task = make_task(config, workdir, mesh)
    if mode == "train":
        save_config(workdir, config)
        state = loop.train(task, config, workdir, mesh)
        step = int(state.step)
        report(task, loop.Restored(step, state.params, str(step)), workdir, config.final_split)
    elif mode == "eval" and checkpoint == "all":
        results = {}
        for which in loop.saved_checkpoints(config, workdir):
            restored = loop.restore_params(task, config, workdir, mesh, which)
            results[which] = {"step": restored.step, **report(task, restored, workdir, split)}
        path = evaluate.write_table(workdir, split, results)
        if jax.process_index() == 0:
            print(f"\n{open(path, encoding='utf-8').read()}\nwrote {path}")
    elif mode == "eval":
        report(task, loop.restore_params(task, config, workdir, mesh, checkpoint), workdir, split)
    elif mode == "predict":
        restored = loop.restore_params(task, config, workdir, mesh, checkpoint)
        for line in task.predict(restored.params, _read_lines(input_path)):
            print(line, flush=False)
        sys.stdout.flush()
    else:
        restored = loop.restore_params(task, config, workdir, mesh, checkpoint)
        out_dir = os.path.join(workdir, "attention", restored.name)
        for path in task.attention(restored.params, _read_lines(input_path), layer, head, out_dir):
            print(path)


def report(task, restored: loop.Restored, workdir: str, split: str) -> dict:
    """Full evaluation of a split: writes eval/<split>-<name>.{json,tsv}, prints a summary."""
    params, step = restored.params, restored.step
    metrics, rows = task.evaluate(params, split, step, full=True)
    stem = evaluate.write_eval(workdir, split, restored.name, step, metrics, rows)
    if jax.process_index() == 0:
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        label = "" if restored.name == str(step) else f" ({restored.name})"
        print(f"{split} @ step {step}{label}: {summary}")
        for source, reference, hypothesis in rows[: task.config.decode.samples] if rows else []:
            print(f"\n  source:     {source}\n  reference:  {reference}\n  hypothesis: {hypothesis}")
        print(f"\nwrote {stem}.json" + (f" and {stem}.tsv" if rows is not None else ""))
    logging.info("%s @ %d: %s", split, step, metrics)
    return metrics


def _read_lines(path: str | None) -> list[str]:
    if path is None or path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise ValueError(f"--input={path}: no such file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
