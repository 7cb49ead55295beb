"""Train-step time of the translation model under variants, measured side by side.

  python benchmarks/train_step.py [--config=experiments/translate_bible.py] [--length=48] [--steps=5] \
      [--variant='name:model.d_ff=512,data.vocab_size=4000' ...]

Each variant compiles one step at a fixed bucket shape (`--length` tokens per row,
`data.batch_tokens // length` rows), then times `--steps` steps (median). Without
`--variant`: the config as is, without dropout, and with the 'rbg' PRNG for dropout.
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ml_transformer.models.seq2seq import Seq2Seq
from ml_transformer.tasks.translation import model_config, seq2seq_loss
from ml_transformer.train.schedules import make_schedule
from ml_transformer.train.state import TrainState, make_optimizer
from ml_transformer.train.steps import train_step

config_flags.DEFINE_config_file("config", "experiments/translate_bible.py", "Experiment config.")
flags.DEFINE_integer("length", 48, "Padded sequence length of the benchmark batch.")
flags.DEFINE_integer("steps", 5, "Timed steps per variant.")
flags.DEFINE_multi_string("variant", ["as_is:", "no_dropout:model.dropout_rate=0.0", "rbg:"],
                          "name:key=value,... config overrides; the name 'rbg' also switches the PRNG.")
FLAGS = flags.FLAGS


def time_variant(config, length: int, steps: int) -> tuple[float, int]:
    vocab_size = config.data.vocab_size
    model = Seq2Seq(model_config(config, vocab_size, bos_id=2))
    loss_fn = functools.partial(seq2seq_loss, model, config.optimizer.label_smoothing)
    tx = make_optimizer(config, make_schedule(config))
    rows = max(1, config.data.batch_tokens // length)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.integers(4, vocab_size, (rows, length)), jnp.int32) for k in ("inputs", "targets")}
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"][:1], batch["targets"][:1])["params"]
    state = TrainState.create(params, tx)
    step = jax.jit(functools.partial(train_step, loss_fn=loss_fn, tx=tx, unit="tokens"), donate_argnums=0)
    key = jax.random.key(1)
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return statistics.median(times), rows * length


def main(_):
    first = None
    for variant in FLAGS.variant:
        name, _, overrides = variant.partition(":")
        config = FLAGS.config.copy_and_resolve_references()
        for item in filter(None, overrides.split(",")):
            key, value = item.split("=")
            *path, leaf = key.split(".")
            node = functools.reduce(getattr, path, config)
            setattr(node, leaf, type(getattr(node, leaf))(value))
        jax.config.update("jax_default_prng_impl", "rbg" if name == "rbg" else "threefry2x32")
        seconds, tokens = time_variant(config, FLAGS.length, FLAGS.steps)
        first = first or seconds
        print(f"{name:14s} {seconds:.3f} s/step  {tokens / seconds:,.0f} padded target tokens/s  "
              f"({seconds / first:.2f}x the first)", flush=True)


if __name__ == "__main__":
    app.run(main)
