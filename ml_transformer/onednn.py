"""oneDNN's dots on x86 CPUs: the XLA options that hand them over, and their precision.

Programs compiled by `jit` (train steps, and the matmul that their MFU is measured
against) have XLA:CPU hand each dot to oneDNN, the library behind PyTorch's CPU kernels,
instead of its own kernels: at float32 the default translation model trains on 5-7% more
tokens per second, within float32 rounding. Dots go one at a time; oneDNN's fusion of dots
with their neighbours ('dot' instead of 'individual dot') aborts on the train step
("partition compile failed"). XLA cannot write such programs to the persistent compilation
cache: they compile in every process. Evaluation steps and searches keep XLA's kernels and
that cache (README, Speed). `XLA_FLAGS=--xla_cpu_use_onednn=false` keeps XLA's kernels
everywhere (and train steps in the cache): the options here respect it.

`use_bfloat16_dots()`, which launch.py calls, has oneDNN compute those float32 dots from
inputs rounded to bfloat16, with float32 sums, on AMX tiles where the CPU has them: what
JAX's default matmul precision means on TPUs (GPUs round to TF32). Parameters, activations,
the optimizer and every other op stay float32. The default train step then takes about
two thirds of the time, with the same loss curve and test BLEU (README, Speed).
"""

from __future__ import annotations

import os
import platform

import jax

X86_CPU_OPTIONS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
FPMATH_MODE = "ONEDNN_DEFAULT_FPMATH_MODE"  # oneDNN's setting: STRICT (float32 inputs) or BF16
BFLOAT16_PRECISIONS = (None, "default", "bfloat16", "fastest")  # jax_default_matmul_precision values


TURNED_OFF = {"--xla_cpu_use_onednn=false", "--xla_cpu_use_onednn=0"}  # in XLA_FLAGS


def _enabled() -> bool:
    """Whether this is an x86 machine whose XLA_FLAGS do not turn oneDNN off (the options
    given at compile time would override them)."""
    turned_off = TURNED_OFF & set(os.environ.get("XLA_FLAGS", "").split())
    return platform.machine().lower() in ("x86_64", "amd64") and not turned_off


def compiler_options(devices=None) -> dict | None:
    """XLA options for compiling train steps on `devices`: `X86_CPU_OPTIONS` on x86 CPUs,
    unless XLA_FLAGS has `--xla_cpu_use_onednn=false`."""
    devices = devices or jax.devices()
    return dict(X86_CPU_OPTIONS) if devices[0].platform == "cpu" and _enabled() else None


def jit(fun, *, devices=None, **kwargs):
    """`jax.jit(fun, **kwargs)` compiled with `compiler_options(devices)`."""
    return jax.jit(fun, compiler_options=compiler_options(devices), **kwargs)


def use_bfloat16_dots() -> bool:
    """On x86, float32 dots through oneDNN from bfloat16-rounded inputs for this process,
    unless the environment says otherwise: ONEDNN_DEFAULT_FPMATH_MODE set,
    JAX_DEFAULT_MATMUL_PRECISION (`jax_default_matmul_precision`) asking for more than
    bfloat16, e.g. `highest`, or XLA_FLAGS turning oneDNN off; whether it applied. Call it
    before the first oneDNN dot: oneDNN reads the setting once."""
    if not _enabled() or FPMATH_MODE in os.environ or jax.config.jax_default_matmul_precision not in BFLOAT16_PRECISIONS:
        return False
    os.environ[FPMATH_MODE] = "BF16"
    return True
