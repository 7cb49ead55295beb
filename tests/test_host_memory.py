"""CPU-only runs keep freed host memory: XLA's large temporaries stop faulting pages in on every call."""

import os
import subprocess
import sys

import pytest

from ml_transformer import host_memory

# Calls a gradient whose 64 MiB temporaries (4096 x 4096 float32) glibc would mmap afresh
# on each call; prints the median of the page faults of 7 calls once the heap has grown.
FAULTS_PER_CALL = """
import resource, statistics, sys
from ml_transformer import host_memory
assert not sys.argv[1:] or host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(jax.grad(lambda x: jnp.tanh(x @ x.T).sum()))
x = jnp.ones((4096, 64))
for _ in range(6):
    f(x).block_until_ready()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def faults_per_call(*args: str) -> float:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_large_temporaries_stop_faulting_once_freed_memory_is_kept():
    default, kept = faults_per_call(), faults_per_call("keep")
    assert default > 4096  # at least the 64 MiB temporary, in 4 KiB pages
    assert kept < default / 20


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("cuda", False), ("cpu,cuda", False), ("tpu", False)])
def test_only_processes_that_run_on_the_cpu_alone_keep_freed_memory(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_memory.cpu_only() is expected
