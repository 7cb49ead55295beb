"""Runs an experiment in one of the modes of the run contract: train, eval, predict, attention."""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import warnings
from typing import NamedTuple

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ml_transformer import config_checks, evaluate, interop, sharding, workdir as workdirs
from ml_transformer.tasks import make_task
from ml_transformer.train import loop, restore

MODES = ("train", "eval", "predict", "attention", "export")
COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ml_transformer", "xla")


def use_compilation_cache() -> None:
    """Keeps compiled programs on disk (JAX's persistent compilation cache), so that a later
    run of the same model and shapes (eval, predict, a benchmark) loads them instead of
    compiling: in $JAX_COMPILATION_CACHE_DIR when set, else `COMPILATION_CACHE`."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # decoding's programs take ~1 s each
    # XLA cannot write programs with oneDNN's dots (train steps on x86 CPUs: `onednn.jit`) to
    # the cache: they compile in every run, without a warning each.
    warnings.filterwarnings("ignore", "Error writing persistent compilation cache entry .*onednn")


def run(config, workdir: str, mode: str = "train", *, checkpoint: str = "latest", split: str = "test",
        input_path: str | None = None, layer: int = -1, head: int = -1, profile_steps: str = "",
        output: str | None = None) -> None:
    if mode not in MODES:
        raise ValueError(f"--mode={mode}: not one of {', '.join(MODES)}")
    if mode == "attention" and jax.process_count() > 1:
        raise ValueError(f"--mode=attention: runs in one process (this run has {jax.process_count()})")
    if mode == "export" and not output:
        raise ValueError("--mode=export: give the folder to write with --output=DIR")
    if mode == "train" and interop.hf_path(checkpoint):
        raise ValueError(f"--checkpoint={checkpoint}: to train from it, use --config.init_from={checkpoint}")
    config_checks.validate(config)
    init_from = config.get("init_from")
    if init_from and not interop.hf_path(init_from):
        raise ValueError(f"config.init_from={init_from!r}: expected hf:PATH (a Hugging Face checkpoint folder)")
    pretrained = interop.hf_path(checkpoint) or interop.hf_path(init_from)
    if pretrained:
        interop.apply_to_config(config, interop.open_checkpoint(pretrained))
    profile = _step_range(profile_steps)
    inputs = read_inputs(input_path) if mode in ("predict", "attention") else None
    mesh = sharding.mesh_from_config(config)
    workdirs.create(workdir)
    with _held(workdir, mode == "train"):
        with sharding.process_0_first("data and tokenizer"):
            task = make_task(config, workdir, mesh)
        lead = jax.process_index() == 0  # the one process that writes files and prints
        if mode == "train":
            state = loop.train(task, config, workdir, mesh, profile)
            step = int(state.step)
            report(task, restore.Restored(step, state.params, str(step)), workdir, config.final_split)
        elif mode == "eval" and checkpoint == "all":
            results = {}
            for which in restore.saved_checkpoints(config, workdir):
                restored = restore.restore_params(task, config, workdir, mesh, which)
                results[which] = {"step": restored.step, **report(task, restored, workdir, split)}
            if lead:
                path = evaluate.write_table(workdir, evaluate.result_name(config, split, "all"), results)
                print(f"\n{pathlib.Path(path).read_text(encoding='utf-8')}\nwrote {path}")
        elif mode == "eval":
            report(task, restore.restore_params(task, config, workdir, mesh, checkpoint), workdir, split)
        elif mode == "export":
            restored = restore.restore_params(task, config, workdir, mesh, checkpoint)
            if lead:
                interop.export(config, restored.params, workdir, output)
                print(f"wrote {output}")
        elif mode == "predict":
            restored = restore.restore_params(task, config, workdir, mesh, checkpoint)
            task.choose_decoding(restored.params, restored.name, workdir)
            answers = task.predict(restored.params, inputs.lines, inputs.numbers)
            if lead:
                print("".join(f"{answer}\n" for answer in inputs.place(answers)), end="", flush=True)
        else:
            restored = restore.restore_params(task, config, workdir, mesh, checkpoint)
            task.choose_decoding(restored.params, restored.name, workdir)
            out_dir = os.path.join(workdir, "attention", restored.name)
            for path in task.attention(restored.params, inputs.lines, inputs.numbers, layer, head, out_dir):
                print(path)


@contextlib.contextmanager
def _held(workdir: str, write: bool):
    """Holds the workdir while a training run writes to it (`workdir.held`), once for all
    processes of a run: process 0 takes the lock, and every process stops if it cannot."""
    with contextlib.ExitStack() as stack:
        refused = None
        if write and jax.process_index() == 0:
            try:
                stack.enter_context(workdirs.held(workdir))
            except workdirs.WorkdirError as e:
                refused = e
        if write and jax.process_count() > 1:
            agreed = bool(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
            if refused is None and not agreed:
                refused = workdirs.WorkdirError(f"--workdir={workdir}: process 0 could not hold it (see its error)")
        if refused is not None:
            raise refused
        yield


def report(task, restored: restore.Restored, workdir: str, split: str) -> dict:
    """Full evaluation of a split: prints a summary, then writes
    eval/<result name>.{json,tsv} (`evaluate.result_name`)."""
    task.choose_decoding(restored.params, restored.name, workdir)
    params, step = restored.params, restored.step
    metrics, rows = task.evaluate(params, split, step, full=True)
    logging.info("%s @ %d: %s", split, step, metrics)
    if jax.process_index() == 0:
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        label = "" if restored.name == str(step) else f" ({restored.name})"
        print(f"{split} @ step {step}{label}: {summary}", flush=True)
        width = max(map(len, task.row_names)) + 2
        for row in rows[: task.config.decode.samples] if rows else []:
            print("\n" + "\n".join(f"  {f'{name}:':<{width}}{value}" for name, value in zip(task.row_names, row)),
                  flush=True)
        name = evaluate.result_name(task.config, split, restored.name)
        stem = evaluate.write_eval(workdir, name, step, split, restored.name, metrics, rows, task.row_names)
        print(f"\nwrote {stem}.json" + (f" and {stem}.tsv" if rows is not None else ""))
    return metrics


def _step_range(text: str) -> tuple[int, int] | None:
    """'A:B' → (A, B) with 0 <= A < B; '' → None."""
    if not text:
        return None
    start, _, stop = text.partition(":")
    if not (start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        raise ValueError(f"--profile_steps={text}: expected A:B, steps with A < B")
    return int(start), int(stop)


class Inputs(NamedTuple):
    """The lines of a predict/attention input that hold text, with their line numbers
    (from 1) among all `count` lines."""

    count: int
    numbers: list[int]
    lines: list[str]

    def place(self, answers: list[str]) -> list[str]:
        """An answer for every input line: `answers` (one per text line) in place, and an
        empty answer for each empty line."""
        placed = [""] * self.count
        for number, answer in zip(self.numbers, answers, strict=True):
            placed[number - 1] = answer
        return placed


def read_inputs(path: str | None) -> Inputs:
    """The lines of `path`, or stdin (None or '-'). ValueError naming the source and the
    line of a line that is not UTF-8, or the source if no line holds text."""
    stdin = path in (None, "-")
    if not stdin and not os.path.isfile(path):
        raise ValueError(f"--input={path}: no such file")
    source = "stdin" if stdin else f"--input={path}"
    with contextlib.nullcontext(sys.stdin.buffer) if stdin else open(path, "rb") as f:
        raw = f.read().split(b"\n")
    if raw[-1] == b"":
        raw.pop()
    inputs = Inputs(len(raw), [], [])
    for number, line in enumerate(raw, 1):
        try:
            text = line.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source} line {number}: not UTF-8 text (byte 0x{line[e.start]:02x} at "
                             f"position {e.start})") from None
        if text.strip():
            inputs.numbers.append(number)
            inputs.lines.append(text)
    if not inputs.lines:
        raise ValueError(f"{source}: no input lines" + (f" (all {len(raw)} are empty)" if raw else ""))
    return inputs
