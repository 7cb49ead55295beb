"""oneDNN's float32 dots on x86 CPUs: bfloat16 inputs by default, float32 when the environment asks."""

import os
import platform
import subprocess
import sys

import pytest

# In a fresh process (oneDNN reads its setting once): whether `use_bfloat16_dots` applied,
# and the largest error of a float32 matmul compiled as train steps are, relative to the
# largest entry of the exact product.
MATMUL_ERROR = """
import numpy as np, jax.numpy as jnp
from ml_transformer import onednn
applied = onednn.use_bfloat16_dots()
x = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
exact = x.astype(np.float64) @ x
out = np.asarray(onednn.jit(jnp.matmul)(x, x))
print(applied, np.abs(out - exact).max() / np.abs(exact).max())
"""
SETTINGS = ("JAX_DEFAULT_MATMUL_PRECISION", "ONEDNN_DEFAULT_FPMATH_MODE", "XLA_FLAGS")


@pytest.mark.parametrize("env, bfloat16", [({}, True), ({"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, False),
                                           ({"ONEDNN_DEFAULT_FPMATH_MODE": "STRICT"}, False),
                                           ({"XLA_FLAGS": "--xla_cpu_use_onednn=false"}, False)])
def test_float32_dots_take_bfloat16_inputs_unless_the_environment_asks_for_float32(env, bfloat16):
    environ = {key: value for key, value in os.environ.items() if key not in SETTINGS} | env | {"JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", MATMUL_ERROR], env=environ, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    applied, error = result.stdout.split()
    bfloat16 &= platform.machine().lower() in ("x86_64", "amd64")
    assert applied == str(bfloat16)
    # bfloat16 keeps 8 significant bits: inputs rounded by up to 2^-9 relative.
    assert 1e-4 < float(error) < 1e-2 if bfloat16 else float(error) < 1e-5
