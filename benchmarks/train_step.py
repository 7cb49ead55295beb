r"""Train-step speed of the translation model: time, XLA-counted FLOPs, their share of the
cores' matmul figure, and whether the input pipeline keeps up with the step.

  python benchmarks/train_step.py [--config=experiments/translate_bible.py] [--rows=64] [--length=32] \
      [--steps=5] [--data_steps=40] [--variant='name:model.d_ff=1024,...' ...] [--config.KEY=VALUE ...]

As in launch.py, float32 dots take bfloat16 inputs on x86 CPUs
(`onednn.use_bfloat16_dots`; JAX_DEFAULT_MATMUL_PRECISION=highest keeps float32). First
the figure the step is compared with: a dense 2048 x 2048 matmul through XLA, compiled as
the step is (`onednn.jit`), in float32 and in bfloat16. Then, per variant (config
overrides; by default the config as it is), the training loop's own step
(`loop.compile_train_step`) on a fixed batch of `--rows` x `--length` tokens per side:
median seconds per step, FLOPs of the compiled step (XLA's cost analysis), FLOP/s and
their share of the float32 matmul figure; then the step's dots alone, as plain matmuls of
the same sizes (`dots_alone`): their share is the most the whole step could reach. With
`--data_steps` N > 0, the first variant then trains N steps on the corpus's own batches,
read as the loop reads them (`loop.read_ahead`: a thread prepares the next batch while the
step runs), and the same N batches already on the device: the first time over the second
is what the input pipeline costs (goal: at most 1.05). Beside it: the time to produce one
batch on the host, and the non-padding source+target tokens per second (the figure
`benchmarks/pytorch_marian.py` gives for PyTorch).
"""

import functools
import math
import statistics
import tempfile
import time

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ml_transformer import host_memory, onednn, sharding
from ml_transformer.tasks.translation import TranslationTask
from ml_transformer.train import loop, throughput
from ml_transformer.train.state import build_state

config_flags.DEFINE_config_file("config", "experiments/translate_bible.py", "Experiment config.")
flags.DEFINE_integer("rows", 64, "Rows of the fixed benchmark batch.")
flags.DEFINE_integer("length", 32, "Tokens per row and side of the fixed benchmark batch.")
flags.DEFINE_integer("steps", 5, "Timed steps per variant on the fixed batch (median).")
flags.DEFINE_integer("data_steps", 40, "Steps on the corpus's batches (0: skip).")
flags.DEFINE_multi_string("variant", ["as_is:"], "name:key=value,... config overrides.")
FLAGS = flags.FLAGS


def with_overrides(config, overrides: str):
    config = config.copy_and_resolve_references()
    for item in filter(None, overrides.split(",")):
        key, value = item.split("=")
        *path, leaf = key.split(".")
        node = functools.reduce(getattr, path, config)
        setattr(node, leaf, type(getattr(node, leaf))(value))
    return config


def run_steps(step, state, batches, rng):
    """(state after the steps, seconds they took until the last one finished, FLOPs of the last)."""
    start = time.perf_counter()
    for batch in batches:
        state, sums, flops = step(state, batch, rng)
    jax.block_until_ready(sums)
    return state, time.perf_counter() - start, flops


def fixed_batch(step, state, task, mesh, rng):
    """(state, median seconds per step, FLOPs per step, the batch) on a fixed random batch."""
    tokens = np.random.default_rng(0).integers(4, task.tokenizer.vocab_size, (2, FLAGS.rows, FLAGS.length))
    batch = sharding.to_global({"inputs": tokens[0].astype(np.int32), "targets": tokens[1].astype(np.int32)}, mesh)
    state, _, flops = run_steps(step, state, [batch], rng)  # compiles
    times = []
    for _ in range(FLAGS.steps):
        state, seconds, _ = run_steps(step, state, [batch], rng)
        times.append(seconds)
    return state, statistics.median(times), flops, batch


def _dot_equations(jaxpr):
    """The dot_general equations of a jaxpr and of the jaxprs inside it, a scan's once per iteration."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    yield from list(_dot_equations(sub)) * eqn.params.get("length", 1)


def _as_matmul(eqn) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Operand shapes of a dot_general as a batched row-major matmul: (B, M, K) and (B, K, N)."""
    lhs, rhs = (var.aval.shape for var in eqn.invars)
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    batch, k = math.prod(lhs[d] for d in lhs_batch), math.prod(lhs[d] for d in lhs_contract)
    return (batch, math.prod(lhs) // (batch * k), k), (batch, k, math.prod(rhs) // (batch * k))


def dots_alone(step, state, batch, rng) -> tuple[int, float, float]:
    """(number, median seconds, XLA-counted FLOPs) of the step's dots alone, each as a plain
    row-major matmul of its sizes (no transposes to feed it), all in one program compiled as
    the step is: how fast the step could be if nothing but its dots took time."""
    dots = list(_dot_equations(step.jitted.trace(state, batch, rng).jaxpr.jaxpr))
    shapes = [shape for eqn in dots for shape in _as_matmul(eqn)]
    keys = jax.random.split(jax.random.key(0), len(shapes))
    operands = [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)]

    def program(operands):
        return [jnp.matmul(*operands[i:i + 2]) for i in range(0, len(operands), 2)]

    compiled = onednn.jit(program).lower(operands).compile()
    jax.block_until_ready(compiled(operands))
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(operands))
        times.append(time.perf_counter() - start)
    return len(dots), statistics.median(times), throughput.compiled_flops(compiled)


def real_data(step, state, task, mesh, rng, count: int) -> str:
    """The loop's input path against the same batches held on the device."""
    dataset = task.train_batches()
    host, host_seconds = [], []
    for i in range(count):
        start = time.perf_counter()
        host.append(dataset[i])
        host_seconds.append(time.perf_counter() - start)
    held = [sharding.to_global(batch, mesh) for batch in host]
    shapes = {batch["inputs"].shape: batch for batch in held}
    state, _, _ = run_steps(step, state, shapes.values(), rng)  # compiles each shape once
    timings = {"read": [], "held": []}
    for _ in range(2):  # alternated, the faster of two kept: the machine's noise aside
        batches = loop.read_ahead(task, 0, mesh)
        state, seconds, _ = run_steps(step, state, (next(batches) for _ in range(count)), rng)
        timings["read"].append(seconds)
        state, seconds, _ = run_steps(step, state, held, rng)
        timings["held"].append(seconds)
    read, on_device = min(timings["read"]), min(timings["held"])
    real_tokens = sum(int(np.count_nonzero(b["inputs"]) + np.count_nonzero(b["targets"])) for b in host)
    return (f"real data, {count} steps: {read / count:.3f} s/step as the loop reads them, {on_device / count:.3f} "
            f"s/step held on the device ({read / on_device:.3f}x); a batch takes "
            f"{statistics.median(host_seconds) * 1e3:.2f} ms to produce on the host; "
            f"{real_tokens / read:,.0f} non-padding source+target tokens/s")


def main(_):
    host_memory.keep_freed_memory()  # as launch.py does
    onednn.use_bfloat16_dots()  # as launch.py does
    f32 = throughput.matmul_flops(dtype=jnp.float32)
    bf16 = throughput.matmul_flops(dtype=jnp.bfloat16)
    print(f"matmul 2048x2048 through XLA: float32 {f32 / 1e9:,.0f} GFLOP/s, bfloat16 {bf16 / 1e9:,.0f} GFLOP/s "
          f"({bf16 / f32:.2f}x)", flush=True)
    first = None
    for n, variant in enumerate(FLAGS.variant):
        name, _, overrides = variant.partition(":")
        config = with_overrides(FLAGS.config, overrides)
        mesh = sharding.mesh_from_config(config)
        with tempfile.TemporaryDirectory() as workdir:
            task = TranslationTask(config, workdir, mesh)
            tx, _, abstract, init = build_state(task, config, mesh)
            step = loop.compile_train_step(task, config, mesh, tx, abstract)
            rng = jax.random.key(0)
            state, seconds, flops, batch = fixed_batch(step, init(), task, mesh, rng)
            first = first or seconds
            print(f"{name}: {seconds:.3f} s/step on {FLAGS.rows}x{FLAGS.length} ({seconds / first:.2f}x the first), "
                  f"{flops:.3g} FLOP/step, {flops / seconds / 1e9:,.0f} GFLOP/s = {flops / seconds / f32:.0%} of "
                  "the float32 matmul", flush=True)
            count, dot_seconds, dot_flops = dots_alone(step, state, batch, rng)
            print(f"{name}'s {count} dots alone, as plain matmuls in one program: {dot_seconds:.3f} s "
                  f"({dot_seconds / seconds:.0%} of the step), {dot_flops:.3g} FLOP, {dot_flops / dot_seconds / 1e9:,.0f} "
                  f"GFLOP/s = {dot_flops / dot_seconds / f32:.0%} of the float32 matmul", flush=True)
            if n == 0 and FLAGS.data_steps:
                print(real_data(step, state, task, mesh, rng, FLAGS.data_steps), flush=True)


if __name__ == "__main__":
    app.run(main)
