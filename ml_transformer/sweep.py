"""Hyperparameter sweeps: the runs a config file's `get_sweep(arg)` lists, each a
`launch.py` training run in `WORKDIR/<run name>`, then a table and a plot of their results.

`get_sweep` takes the same argument string as `get_config` and returns the runs as override
dicts (dotted config keys to values), built with `product` and `zipped`:

    def get_sweep(arg=None):
        return sweep.product({"optimizer.learning_rate": [1e-3, 3e-3]}, sweep.zipped(
            {"model.num_layers": [2, 4], "model.d_model": [128, 64]}))

A run's name is made of its overrides (`learning_rate=0.001,num_layers=2,d_model=128`). A
run whose final evaluation exists is skipped; an unfinished one resumes from its checkpoints.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from ml_transformer import config_checks, workdir as workdirs
from ml_transformer.evaluate import markdown_table, result_name

Overrides = dict[str, object]
RUN_FILE_KEYS = ("step", "split", "checkpoint")  # in a final evaluation's JSON beside the metrics


# --- building sweeps ------------------------------------------------------------------------


def product(*sweeps: Mapping[str, Sequence] | Sequence[Overrides], **axes: Sequence) -> list[Overrides]:
    """Every combination, the last axis varying fastest. An argument is a sweep (a list of
    override dicts) or a dict `{key: values}` of one axis per key; keyword arguments are
    axes of top-level keys (`seed=[0, 1]`)."""
    return [_merge(runs) for runs in itertools.product(*_axes(sweeps, axes))]


def zipped(*sweeps: Mapping[str, Sequence] | Sequence[Overrides], **axes: Sequence) -> list[Overrides]:
    """The i-th values of every axis together (arguments as for `product`); the axes must
    be of one length."""
    columns = _axes(sweeps, axes)
    if len({len(column) for column in columns}) > 1:
        raise ValueError(f"zipped: axes of different lengths {[len(column) for column in columns]}")
    return [_merge(runs) for runs in zip(*columns)]


def _axes(sweeps, axes) -> list[list[Overrides]]:
    columns = []
    for arg in (*sweeps, axes):
        if isinstance(arg, Mapping):
            columns += [[{key: value} for value in values] for key, values in arg.items()]
        else:
            columns.append(list(arg))
    return columns


def _merge(runs: Sequence[Overrides]) -> Overrides:
    merged = {}
    for overrides in runs:
        if twice := overrides.keys() & merged.keys():
            raise ValueError(f"{', '.join(sorted(twice))}: swept twice")
        merged.update(overrides)
    return merged


def run_names(runs: Sequence[Overrides]) -> list[str]:
    """Readable, filesystem-safe names: `key=value` joined by commas, a key being its last
    dotted part unless two swept keys share it."""
    labels = _labels(swept_keys(runs))
    names = [",".join(f"{labels[k]}={v}" for k, v in run.items()) or "default" for run in runs]
    names = [re.sub(r"[^A-Za-z0-9_.=,+-]", "_", name) for name in names]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"two runs named {', '.join(twice)}")
    return names


def swept_keys(runs: Sequence[Overrides]) -> list[str]:
    return list(dict.fromkeys(key for run in runs for key in run))


def _labels(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


# --- planning -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: Overrides
    dir: str
    final_eval: str  # the final evaluation's JSON: there once the run has finished


@dataclasses.dataclass(frozen=True)
class Sweep:
    spec: str  # the config file and argument, `experiments/NAME.py[:ARG]`
    workdir: str
    runs: list[Run]
    overrides: Overrides  # of the sweep's command line, given to every run
    launcher: str  # path of launch.py

    def command(self, run: Run, python: str = sys.executable) -> list[str]:
        overrides = {**self.overrides, **run.overrides}
        return [python, self.launcher, f"--config={self.spec}", f"--workdir={run.dir}",
                *(f"--config.{key}={value}" for key, value in overrides.items())]


def load_sweep(spec: str) -> list[Overrides]:
    """`get_sweep(arg)` of the config file `spec` (`PATH[:ARG]`)."""
    path, *arg = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path}: no get_sweep(arg) listing the runs of a sweep")
    runs = module.get_sweep(*arg)
    if not runs or not all(isinstance(run, Mapping) for run in runs):
        raise ValueError(f"{path}: get_sweep must return a non-empty list of override dicts")
    return [dict(run) for run in runs]


def plan(config, spec: str, workdir: str, overrides: Overrides, launcher: str) -> Sweep:
    """The sweep of config file `spec` over `config` (its ConfigDict, with the command line's
    overrides); every run's overrides are checked against it before anything runs."""
    runs = load_sweep(spec)
    workdir = os.path.abspath(workdir)
    planned = []
    for name, run in zip(run_names(runs), runs):
        where = f"{spec.split(':', 1)[0]}: get_sweep"
        resolved = _override(config, run, where)
        try:
            config_checks.validate(resolved)
        except ValueError as e:
            raise ValueError(f"{where}: run {name}: {e}") from None
        final_name = result_name(resolved, resolved.final_split, str(resolved.total_steps))
        final_eval = os.path.join(workdir, name, "eval", f"{final_name}.json")
        planned.append(Run(name, run, os.path.join(workdir, name), final_eval))
    return Sweep(spec, workdir, planned, dict(overrides), launcher)


def _override(config, overrides: Overrides, where: str):
    """A copy of `config` with `overrides` set; an unknown key or a value of the wrong type
    raises ValueError naming the key."""
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        *parents, field = key.split(".")
        node = config
        try:
            for parent in parents:
                node = node[parent]
            if field not in node:
                raise KeyError(key)
            node[field] = value
        except (KeyError, TypeError, AttributeError) as e:
            problem = "no such config field" if isinstance(e, KeyError) else f"cannot take {value!r}"
            raise ValueError(f"{where}: {key}: {problem}") from None
    return config


# --- running --------------------------------------------------------------------------------


def run(config, spec: str, workdir: str, *, overrides: Overrides, launcher: str, parallel: int = 1,
        emit: str = "", metric: str | None = None) -> None:
    """Runs the sweep `parallel` runs at a time (or, with `emit="slurm"`, writes
    `WORKDIR/sweep.sbatch`), then writes `WORKDIR/sweep.{csv,md,png}`; raises ValueError
    naming the failed runs after the others have finished."""
    sweep = plan(config, spec, workdir, overrides, launcher)
    if emit == "slurm":
        print(write_slurm(sweep))
        return
    workdirs.create(sweep.workdir)
    with workdirs.held(sweep.workdir):  # each run holds its own folder too
        print(f"sweep of {spec}: {len(sweep.runs)} runs in {sweep.workdir}, {parallel} at a time", flush=True)
        with ThreadPoolExecutor(parallel) as pool:
            statuses = list(pool.map(functools.partial(_execute, sweep), sweep.runs))
        summarize(sweep, statuses, metric or config.best_metric, config.final_split)
    failed = [f"{run.name} {status.removeprefix('failed ')}" for run, status in zip(sweep.runs, statuses)
              if status.startswith("failed")]
    if failed:
        raise ValueError(f"{len(failed)} of {len(sweep.runs)} runs failed (see their launch.log): {', '.join(failed)}")


def _execute(sweep: Sweep, run: Run) -> str:
    """Runs one run unless it has finished, its output in `<run dir>/launch.log`; its status."""
    if os.path.exists(run.final_eval):
        print(f"{run.name}: skipped (finished)", flush=True)
        return "skipped"
    os.makedirs(run.dir, exist_ok=True)
    print(f"{run.name}: started", flush=True)
    start = time.monotonic()
    log_path = os.path.join(run.dir, "launch.log")
    with open(log_path, "a", encoding="utf-8") as log:
        code = subprocess.run(sweep.command(run), stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    status = "trained" if code == 0 else f"failed (exit {code})"
    seconds = time.monotonic() - start
    print(f"{run.name}: {status} in {seconds:.0f} s" + (f", see {log_path}" if code else ""), flush=True)
    return status


def write_slurm(sweep: Sweep) -> str:
    """Writes `WORKDIR/sweep.sbatch`, a Slurm array of the runs (task i runs run i from this
    working directory, its output in `<run dir>/launch.log`); returns its path."""
    bash_array = lambda items: "\n".join(f"  {shlex.quote(item)}" for item in items)  # noqa: E731
    path = os.path.join(sweep.workdir, "sweep.sbatch")
    script = f"""#!/bin/bash
#SBATCH --job-name=sweep-{os.path.basename(sweep.workdir)}
#SBATCH --array=0-{len(sweep.runs) - 1}
#SBATCH --output={sweep.workdir}/slurm-%A_%a.out
# The runs of the sweep of {sweep.spec}, one per array task: sbatch {path}
# Then the same sweep command without --sweep_emit writes the tables.
set -euo pipefail
cd {shlex.quote(os.getcwd())}
run_dirs=(
{bash_array(run.dir for run in sweep.runs)}
)
commands=(
{bash_array(shlex.join(sweep.command(run, python="python")) for run in sweep.runs)}
)
i=$SLURM_ARRAY_TASK_ID
mkdir -p "${{run_dirs[i]}}"
eval "${{commands[i]}}" >> "${{run_dirs[i]}}/launch.log" 2>&1
"""
    os.makedirs(sweep.workdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(script)
    return path


# --- results --------------------------------------------------------------------------------


def final_metrics(run: Run) -> dict:
    """The metrics of the run's final evaluation; empty if it has none."""
    if not os.path.exists(run.final_eval):
        return {}
    with open(run.final_eval, encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if k not in RUN_FILE_KEYS}


def summarize(sweep: Sweep, statuses: list[str], metric: str, split: str) -> None:
    """Writes `sweep.csv` and `sweep.md` (a row per run: name, swept values, status, final
    metrics, printed too) and `sweep.png` (`metric` against the swept values)."""
    results = [final_metrics(run) for run in sweep.runs]
    metric_names = list(dict.fromkeys(k for metrics in results for k in metrics))
    path = os.path.join(sweep.workdir, "sweep")
    write_tables(path, sweep.runs, statuses, results, metric_names)
    points = [(run, metrics[metric]) for run, metrics in zip(sweep.runs, results) if metric in metrics]
    if points:
        plot(path + ".png", points, f"{split} {metric}", f"sweep of {sweep.spec}")
        print(f"wrote {path}.png")
    elif metric_names:
        raise ValueError(f"{metric}: not among the final metrics ({', '.join(metric_names)}); pick one with "
                         "--sweep_metric")


def write_tables(path: str, runs: list[Run], statuses: list[str], results: list[dict],
                 metric_names: list[str]) -> None:
    """`path.csv` and `path.md`: name, swept values, status and final metrics of each run."""
    keys = swept_keys([run.overrides for run in runs])
    header = ["name", *keys, "status", *metric_names]
    rows = [[run.name, *(run.overrides.get(k, "") for k in keys), status, *(m.get(k, "") for k in metric_names)]
            for run, status, m in zip(runs, statuses, results)]
    with open(path + ".csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    table = markdown_table(header, rows)
    with open(path + ".md", "w", encoding="utf-8") as f:
        f.write(table)
    print(f"\n{table}\nwrote {path}.csv and {path}.md")


def plot(path: str, points: list[tuple[Run, float]], ylabel: str, title: str) -> None:
    """The metric of each run against its swept values: against the key of the most values
    with a line per combination of the others' values when all are numbers, else a bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [run.overrides for run, _ in points]
    keys = swept_keys(swept)
    labels = _labels(keys)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if keys and all(_is_number(overrides.get(k)) for overrides in swept for k in keys):
        x_key = max(keys, key=lambda k: len({overrides[k] for overrides in swept}))
        lines = {}
        for overrides, (_, y) in zip(swept, points):
            label = ", ".join(f"{labels[k]}={overrides[k]}" for k in keys if k != x_key)
            lines.setdefault(label, []).append((overrides[x_key], y))
        for label, xy in lines.items():
            ax.plot(*zip(*sorted(xy)), "o-", label=label)
        xs = [overrides[x_key] for overrides in swept]
        if min(xs) > 0 and max(xs) >= 10 * min(xs):
            ax.set_xscale("log")
        ax.set_xlabel(x_key)
        if len(keys) > 1:
            ax.legend()
    else:
        ax.bar(range(len(points)), [y for _, y in points])
        ax.set_xticks(range(len(points)), [run.name for run, _ in points], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
