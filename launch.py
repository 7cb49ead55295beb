"""Launches an experiment.

  python launch.py --config=experiments/NAME.py[:ARG] --workdir=DIR [--mode=train|eval|predict|attention|export|sweep]
                   [--checkpoint=latest|best|avg:N|all|STEP|hf:PATH] [--split=test] [--input=FILE] [--output=DIR]
                   [--layer=-1 --head=-1]
                   [--profile_steps=A:B] [--distributed [--coordinator_address=HOST:PORT --num_processes=N
                   --process_id=I]] [--parallel=N --sweep_emit=slurm --sweep_metric=NAME] [--config.KEY=VALUE ...]
"""

import logging as std_logging
import os
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from ml_transformer import host_memory

config_flags.DEFINE_config_file("config", None, "Experiment config file, optionally with :ARG.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: config, metrics, checkpoints, TensorBoard, eval results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "attention", "export", "sweep"], "What to do.")
flags.DEFINE_string("checkpoint", "latest", "Checkpoint to restore: latest, best, avg:N (mean of the last N), "
                    "a step number, hf:PATH (a Hugging Face checkpoint folder), or (eval mode) all.")
flags.DEFINE_string("output", None, "Export mode: the folder to write the Hugging Face checkpoint into.")
flags.DEFINE_string("split", "test", "Split to evaluate in eval mode.")
flags.DEFINE_string("input", None, "Predict/attention modes: file with one input per line (default: stdin).")
flags.DEFINE_integer("layer", -1, "Attention mode: layer to draw (negative counts from the last).")
flags.DEFINE_integer("head", -1, "Attention mode: head to draw; -1 draws the mean over heads.")
flags.DEFINE_string("profile_steps", "", "Train mode: A:B writes a JAX profiler trace of steps A..B-1 to DIR/profile.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run: jax.distributed.initialize() from the flags "
                  "below, or, without them, from the cluster environment (SLURM, Open MPI, TPU pods, ...).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0..num_processes-1.")
flags.DEFINE_integer("parallel", 1, "Sweep mode: runs at a time.", lower_bound=1)
flags.DEFINE_enum("sweep_emit", "", ["", "slurm"], "Sweep mode: write DIR/sweep.sbatch, a Slurm array of the runs, "
                  "instead of running them.")
flags.DEFINE_string("sweep_metric", None, "Sweep mode: the final metric plotted (default: config.best_metric).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _shown(record: std_logging.LogRecord) -> bool:
    """Info lines from this project's modules only; warnings and errors from everywhere but
    Orbax's background threads and asyncio, whose failures reach the run as exceptions that
    it reports in one line (all of them with --verbosity=1)."""
    if logging.get_verbosity() >= logging.DEBUG:
        return True
    if record.levelno < std_logging.WARNING:
        return f"{os.sep}ml_transformer{os.sep}" in record.pathname
    return not (f"{os.sep}orbax{os.sep}" in record.pathname or record.name == "asyncio")


def _unraisable(info) -> None:
    """Drops the reports of TensorStore write callbacks that reach the event loop of a
    checkpoint save that has already failed (and been reported in one line); passes on
    every other unraisable exception."""
    if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(info)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose failures (bad file, override key or value) end in one line."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()  # a config file that failed to load raises here
        return rest
    except (flags.Error, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.exit(f"error: {lines[-1] if len(lines) > 1 else lines[0]}")
    except AttributeError as e:  # an override naming a field the config does not have
        key = str(e).strip("\"'")
        culprits = [a.split("=")[0] for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        sys.exit(f"error: {', '.join(culprits) or key}: no such config field")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.get_absl_handler().addFilter(_shown)
    sys.unraisablehook = _unraisable
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)  # the same writes
    if FLAGS.mode == "sweep":
        return run_sweep()
    host_memory.keep_freed_memory()  # before JAX starts its backend
    from ml_transformer import onednn

    onednn.use_bfloat16_dots()  # before the first oneDNN dot
    try:
        if FLAGS.distributed:
            import jax

            jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        from ml_transformer import main as runner

        run(runner)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); the checkpoints saved before are intact", file=sys.stderr)
        sys.exit(130)


def run(runner):
    """`runner.run` with the flags; failures that are the input's fault end in one line."""
    from ml_transformer.train.checkpoints import CheckpointError

    runner.use_compilation_cache()
    try:
        runner.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, checkpoint=FLAGS.checkpoint, split=FLAGS.split,
                   input_path=FLAGS.input, layer=FLAGS.layer, head=FLAGS.head, profile_steps=FLAGS.profile_steps,
                   output=FLAGS.output)
    except runner.loop.Preempted as e:
        logging.warning("%s", e)
    except (ValueError, runner.loop.NonFiniteLoss, CheckpointError) as e:
        logging.debug("failure", exc_info=True)
        sys.exit(f"error: {e}")
    except OSError as e:  # a file or folder that cannot be read or written: its path and the cause
        logging.debug("failure", exc_info=True)
        sys.exit(f"error: {runner.workdirs.describe(e)}")


def run_sweep():
    """The runs of the config file's `get_sweep`, each this script in train mode with the
    same config file and argument and this command line's --config overrides."""
    from ml_transformer import sweep

    try:
        sweep.run(FLAGS.config, config_flags.get_config_filename(FLAGS["config"]), FLAGS.workdir,
                  overrides=config_flags.get_override_values(FLAGS["config"]), launcher=os.path.abspath(__file__),
                  parallel=FLAGS.parallel, emit=FLAGS.sweep_emit, metric=FLAGS.sweep_metric)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
