"""Runs an experiment in one of the modes of the run contract: train, eval, predict."""

from __future__ import annotations

import os
import pathlib
import sys

import jax
from absl import logging

from ml_transformer import config_checks, evaluate
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
        input_path: str | None = None, layer: int = -1, head: int = -1, profile_steps: str = "") -> None:
    if mode not in MODES:
        raise ValueError(f"--mode={mode}: not one of {', '.join(MODES)}")
    if mode == "attention" and jax.process_count() > 1:
        raise ValueError(f"--mode=attention: runs in one process (this run has {jax.process_count()})")
    config_checks.validate(config)
    profile = _step_range(profile_steps)
    mesh = partitioning.mesh_from_config(config)
    os.makedirs(workdir, exist_ok=True)
    with partitioning.process_0_first("data and tokenizer"):
        task = make_task(config, workdir, mesh)
    lead = jax.process_index() == 0  # the one process that writes files and prints
    if mode == "train":
        if lead:
            save_config(workdir, config)
        state = loop.train(task, config, workdir, mesh, profile)
        step = int(state.step)
        report(task, loop.Restored(step, state.params, str(step)), workdir, config.final_split)
    elif mode == "eval" and checkpoint == "all":
        results = {}
        for which in loop.saved_checkpoints(config, workdir):
            restored = loop.restore_params(task, config, workdir, mesh, which)
            results[which] = {"step": restored.step, **report(task, restored, workdir, split)}
        if lead:
            path = evaluate.write_table(workdir, split, results)
            print(f"\n{pathlib.Path(path).read_text(encoding='utf-8')}\nwrote {path}")
    elif mode == "eval":
        report(task, loop.restore_params(task, config, workdir, mesh, checkpoint), workdir, split)
    elif mode == "predict":
        restored = loop.restore_params(task, config, workdir, mesh, checkpoint)
        lines = task.predict(restored.params, _read_lines(input_path))
        if lead:
            print("".join(f"{line}\n" for line in lines), end="", flush=True)
    else:
        restored = loop.restore_params(task, config, workdir, mesh, checkpoint)
        out_dir = os.path.join(workdir, "attention", restored.name)
        for path in task.attention(restored.params, _read_lines(input_path), layer, head, out_dir):
            print(path)


def report(task, restored: loop.Restored, workdir: str, split: str) -> dict:
    """Full evaluation of a split: writes eval/<split>-<name>.{json,tsv}, prints a summary."""
    params, step = restored.params, restored.step
    metrics, rows = task.evaluate(params, split, step, full=True)
    if jax.process_index() == 0:
        stem = evaluate.write_eval(workdir, split, restored.name, step, metrics, rows)
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        label = "" if restored.name == str(step) else f" ({restored.name})"
        print(f"{split} @ step {step}{label}: {summary}")
        for source, reference, hypothesis in rows[: task.config.decode.samples] if rows else []:
            print(f"\n  source:     {source}\n  reference:  {reference}\n  hypothesis: {hypothesis}")
        print(f"\nwrote {stem}.json" + (f" and {stem}.tsv" if rows is not None else ""))
    logging.info("%s @ %d: %s", split, step, metrics)
    return metrics


def _step_range(text: str) -> tuple[int, int] | None:
    """'A:B' → (A, B) with 0 <= A < B; '' → None."""
    if not text:
        return None
    start, _, stop = text.partition(":")
    if not (start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        raise ValueError(f"--profile_steps={text}: expected A:B, steps with A < B")
    return int(start), int(stop)


def _read_lines(path: str | None) -> list[str]:
    if path is None or path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise ValueError(f"--input={path}: no such file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
