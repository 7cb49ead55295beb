"""FLOPs of compiled steps and model FLOP utilization (MFU): achieved FLOP/s over peak.

An accelerator's peak is its dense bfloat16 figure from `PEAK_FLOPS`; a CPU's is measured:
a dense 2048 x 2048 float32 matmul through XLA on the same cores, compiled as train steps
are (`matmul_flops`).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from ml_transformer import onednn

# Dense bfloat16 peak FLOP/s per chip, by a substring of `device.device_kind` (first match).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
)


def compiled_flops(compiled, num_devices: int = 1) -> float:
    """FLOPs of one call of a compiled computation that runs on `num_devices` devices, from
    XLA's cost analysis (which counts one device's share of a partitioned computation)."""
    return float(compiled.cost_analysis().get("flops", 0.0)) * num_devices


class CompiledPerShape:
    """A jitted step compiled ahead of time once per batch shape; each call also returns
    the step's FLOPs on all devices, as XLA's cost analysis counts them. XLA counts a loop's
    body once: for a step that loops over slices of its batch, `counted` is a jitted step
    that computes the same without the loop, whose FLOPs (lowered, not compiled) are
    returned instead."""

    def __init__(self, jitted, num_devices: int, counted=None):
        self.jitted, self.num_devices, self.counted, self.compiled = jitted, num_devices, counted, {}

    def __call__(self, state, batch, rng):
        shape = tuple((key, x.shape) for key, x in sorted(batch.items()))
        if shape not in self.compiled:
            compiled = self.jitted.lower(state, batch, rng).compile()
            if self.counted is None:
                flops = compiled_flops(compiled, self.num_devices)
            else:  # the whole program: its FLOPs on all devices together
                flops = float(self.counted.lower(state, batch, rng).cost_analysis().get("flops", 0.0))
            self.compiled[shape] = compiled, flops
        compiled, flops = self.compiled[shape]
        return *compiled(state, batch, rng), flops


@functools.cache
def matmul_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` dense `size` x `size` matmuls through XLA,
    compiled as train steps are (`onednn.jit`)."""
    x = jnp.ones((size, size), dtype)
    matmul = onednn.jit(jnp.matmul)
    jax.block_until_ready(matmul(x, x))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(x, x))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(devices=None) -> tuple[float, str]:
    """(peak FLOP/s of `devices` together, where the figure comes from). CPU devices share
    the host's cores: their peak is one measured matmul figure, whatever their number."""
    devices = devices or jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        return matmul_flops(), "measured: 2048x2048 float32 matmul through XLA"
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops * len(devices), f"bfloat16 dense peak of {len(devices)} x {kind}"
    return float("nan"), f"unknown peak for {kind!r}"
