"""Shared by the tests: running `launch.py` as a user would."""

import atexit
import importlib.util
import os
import shutil
import tempfile

# XLA's compilations are cached on disk for the session (this process and every launch.py it
# starts): many tests compile the same small models.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Float32 dots here and in every launch.py: the tests compare runs across device layouts,
# processes and restarts, and with computations in this process, to float32 rounding, which
# rounding the dots' inputs to bfloat16 (launch.py's default on x86 CPUs) would exceed.
# tests/test_onednn.py checks that default.
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
# XLA's own kernels here and in every launch.py: unlike programs with oneDNN's dots (train
# steps on x86 CPUs), theirs are kept in the compilation cache above. tests/test_onednn.py
# and the oneDNN tests of test_training.py turn this off.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_use_onednn=false".lstrip()
import socket
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6  # of the translation smoke run shared by the tests (`trained`)
DECODING = "beam4-tuned-max+10-min1"  # the smoke config's decoding settings, as result names hold them


def smoke_args(workdir, data_dir) -> list[str]:
    """`launch.py` arguments of the shared translation smoke run; its bucket sizes (32 and
    16 rows) divide over 1, 2 or 8 devices, which then read the same batches."""
    return [
        "--config=experiments/translate_bible.py:smoke", f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}", f"--config.total_steps={STEPS}", "--config.data.max_len=32",
        "--config.checkpoint_every_steps=3", f"--config.eval_every_steps={STEPS}", "--config.decode.final_examples=8",
    ]


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, worker_id):
    """One TFDS data folder for the session, shared by pytest-xdist's workers: each corpus and
    tokenizer is prepared there once, or by two workers at once, which runs may do
    (`data.builders.prepared`; tokenizers are written by renaming)."""
    if worker_id == "master":  # no workers
        return tmp_path_factory.mktemp("tfds")
    shared = tmp_path_factory.getbasetemp().parent / "tfds"
    shared.mkdir(exist_ok=True)
    return shared


# Fixtures that train a run (or a tokenizer) which several tests read.
SHARED_RUNS = ("trained", "digits_run", "reference_run", "verses")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The tests that read one of the `SHARED_RUNS` form a group, which `--dist loadgroup`
    (pyproject.toml) gives to one worker: the run is made once, and no test of another
    worker writes into its workdir while one of them checks it."""
    for item in items:
        used = [name for name in SHARED_RUNS if name in getattr(item, "fixturenames", ())]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tfds_dir):
    """(workdir, data dir, launch result) of the translation smoke run on one device."""
    workdir, data_dir = tmp_path_factory.mktemp("run"), tfds_dir
    result = launch(*smoke_args(workdir, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, data_dir, result


def launch(*args, stdin=None, env=None) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` from the repository root, output captured; `env` adds
    environment variables."""
    return subprocess.run(
        launch_command(*args), input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, **(env or {})},
    )


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT ARGS` from the repository root, output captured."""
    return subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def launch_command(*args) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "launch.py"), *args]


def experiment_config(name: str, arg: str | None = None):
    """`get_config(arg)` of `experiments/<name>.py`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def cpu_devices(count: int) -> dict:
    """The environment variable that gives a process `count` CPU devices."""
    return {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"}


def start_processes(logdir, *args, count: int, devices: int) -> list[subprocess.Popen]:
    """`launch.py ARGS --distributed` as `count` processes on 127.0.0.1 with `devices` CPU
    devices each; process i logs to `logdir/process<i>-<n>.log` (n counts the starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*args, "--distributed", f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}"]
    env = {**os.environ, **cpu_devices(devices)}
    start = len(list(logdir.glob("process0-*.log")))
    processes = []
    for i in range(count):
        log = logdir / f"process{i}-{start}.log"  # a file, not a pipe: an undrained pipe blocks its writer
        with log.open("w") as out:
            processes.append(subprocess.Popen(launch_command(*args, f"--process_id={i}"), cwd=ROOT, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
        processes[-1].log = log
    return processes


def finish_processes(processes: list[subprocess.Popen]) -> list[str]:
    """Waits for processes from `start_processes`, asserts they all succeed, returns each
    one's output."""
    for p in processes:
        assert p.wait(timeout=600) == 0, p.log.read_text()[-3000:]
    return [p.log.read_text() for p in processes]


def launch_processes(logdir, *args, count: int, devices: int) -> list[str]:
    """`start_processes`, then `finish_processes`."""
    return finish_processes(start_processes(logdir, *args, count=count, devices=devices))


def assert_process_shares_make_the_batch(read, count: int = 2) -> None:
    """`read()` (a batch dict) as each of `count` processes sees it: equal shares of the
    rows that, in process order, make the batch one process sees."""
    whole = read()
    shares = []
    for index in range(count):
        with mock.patch("jax.process_index", return_value=index), mock.patch("jax.process_count", return_value=count):
            shares.append(read())
    for key, rows in whole.items():
        assert all(len(share[key]) * count == len(rows) for share in shares), key
        np.testing.assert_array_equal(np.concatenate([share[key] for share in shares]), rows, err_msg=key)


def single_example_predictions(config, args: list[str], lines: list[str]) -> list[tuple[str, float]]:
    """The classifier's (label, probability) for each line, each from a forward pass of
    that example alone, with the latest checkpoint of the run launched with `args`
    (`--workdir=` and `--config.KEY=VALUE` overrides of `config`)."""
    from ml_transformer import sharding
    from ml_transformer.tasks import make_task
    from ml_transformer.tasks.classification import probabilities
    from ml_transformer.train import restore

    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    for arg in args:
        if arg.startswith("--config."):
            key, value = arg.removeprefix("--config.").split("=", 1)
            *parents, field = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[field] = type(node[field])(value) if node[field] is not None else value
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    task = make_task(config, workdir, mesh)
    params = restore.restore_params(task, config, workdir, mesh).params
    forward = jax.jit(lambda x: probabilities(task.model.apply({"params": params}, x)))
    answers = []
    for x in task.data.encode(lines):
        p = np.asarray(forward(x[None]))[0]
        answers.append((task.data.label_names[p.argmax()], float(p.max())))
    return answers


def distinct_predictions(inputs: list[str], answers: list[tuple[str, float]], most: int = 8):
    """(inputs, answers) of up to `most` inputs whose answers `assert_predictions_in_order`
    tells apart, in their order."""
    chosen = []
    for item in zip(inputs, answers):
        if all(_apart(item[1], other) for _, other in chosen) and len(chosen) < most:
            chosen.append(item)
    return [i for i, _ in chosen], [a for _, a in chosen]


def _apart(a: tuple[str, float], b: tuple[str, float]) -> bool:
    return a[0] != b[0] or abs(a[1] - b[1]) > 1e-3


def assert_predictions_in_order(stdout_lines: list[str], expected: list[tuple[str, float]]) -> None:
    """Predict mode's 'label<TAB>probability' lines equal `expected`, in order; the expected
    answers differ enough for a change of order to show."""
    got = [(label, float(p)) for label, p in (line.split("\t") for line in stdout_lines)]
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=2e-4)
    assert all(_apart(a, b) for i, a in enumerate(expected) for b in expected[i + 1:])


HF_FIXTURES = os.path.join(ROOT, "tests", "hf_fixtures")  # tiny transformers checkpoints and their outputs


def changed_hf_fixture(tmp_path, name: str, change_config=None, change_tensors=None) -> str:
    """A copy in `tmp_path` of the checkpoint fixture `name`, its config.json dict and
    tensors dict changed in place by the given functions."""
    from ml_transformer.interop import folder

    path = os.path.join(HF_FIXTURES, name)
    config, found = folder.read_config(path), folder.read_tensors(path)
    (change_config or (lambda c: None))(config)
    (change_tensors or (lambda t: None))(found)
    folder.write(str(tmp_path), config, found)
    return str(tmp_path)


def assert_tensors_refused(tmp_path, name: str, change_tensors, shapes: dict, words: list[str]) -> None:
    """Loading the checkpoint fixture `name`, its tensors changed by `change_tensors`, into a
    model of parameter `shapes` fails with a one-line message holding each of `words`."""
    from ml_transformer import interop

    checkpoint = interop.open_checkpoint(changed_hf_fixture(tmp_path, name, change_tensors=change_tensors))
    with pytest.raises(interop.CheckpointError) as error:
        interop.load_params(checkpoint, shapes)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message
