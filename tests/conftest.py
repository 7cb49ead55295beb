"""Shared by the tests: running `launch.py` as a user would."""

import importlib.util
import os
import socket
import subprocess
import sys
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, stdin=None, env=None) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` from the repository root, output captured; `env` adds
    environment variables."""
    return subprocess.run(
        launch_command(*args), input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, **(env or {})},
    )


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
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


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
