"""Reference: the default translation model's train step in PyTorch (`transformers.MarianMTModel`).

  .venv-torch/bin/python benchmarks/pytorch_marian.py [--config=experiments/translate_bible.py]
      [--steps=20] [--nofixed] [--noreal] [--float32_matmul_precision=highest|medium] [--autocast]
      [--config.KEY=VALUE ...]

Optional, and not a project dependency: it runs from a separate venv with PyTorch,
transformers and the project itself, e.g.

  python3.11 -m venv .venv-torch
  .venv-torch/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  .venv-torch/bin/pip install transformers -e .

The model follows `config.model` as closely as Marian allows: same sizes, ReLU, the
config's dropout rates (0 by default), shared embeddings tied to the output, embeddings
scaled by √d_model, sinusoidal positions (sin and cos in halves, not interleaved). But
Marian is post-LN (our default is pre-LN with a final LayerNorm per stack) and adds a zero
`final_logits_bias` buffer to the logits. Same loss (label smoothing over the V - 1 other
tokens, padding ignored) and optimizer (Adam with the 'transformer' schedule), float32
(torch's default; `--float32_matmul_precision=medium` computes matmuls from bfloat16
inputs, as our train step does on x86 CPUs; `--autocast` runs forward and loss under
`torch.autocast` in bfloat16, PyTorch's own mixed precision for CPUs), on all CPU cores.
Two measurements, each after 2 warm-up steps on a fresh model:

  fixed: median seconds per train step (forward, loss, backward, Adam step) on one random
    batch of 64 rows x 32 tokens per side, without padding: `benchmarks/train_step.py`'s
    fixed batch by default.
  real: non-padding source + target tokens per second over the first `--steps` batches of
    the project's training batches (`TranslationTask.train_batches()`, read beforehand),
    the numpy → torch copy included; the warm-up steps train on the first two of them.
    `benchmarks/train_step.py --data_steps=N` gives the same figure for the project's step.
"""

import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

try:
    import torch
    import torch.nn.functional as F
    from transformers import MarianConfig, MarianMTModel
except ModuleNotFoundError as e:
    sys.exit(f"error: {e.name} is not installed; this reference runs in a separate venv with torch and "
             "transformers (see the docstring of benchmarks/pytorch_marian.py)")

from ml_transformer import sharding
from ml_transformer.tasks.translation import TranslationTask

config_flags.DEFINE_config_file("config", "experiments/translate_bible.py", "Experiment config.")
flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
flags.DEFINE_bool("fixed", True, "Time a fixed random batch of 64 x 32 tokens.")
flags.DEFINE_bool("real", True, "Time the first --steps training batches of the real corpus.")
flags.DEFINE_enum("float32_matmul_precision", "highest", ["highest", "medium"],
                  "torch.set_float32_matmul_precision: 'medium' computes float32 matmuls from bfloat16 "
                  "inputs, as this project's train step does on x86 CPUs by default.")
flags.DEFINE_bool("autocast", False, "Forward and loss under torch.autocast('cpu', dtype=torch.bfloat16).")
FLAGS = flags.FLAGS
WARMUP_STEPS = 2


class Trainer:
    """A fresh Marian model, its Adam optimizer and schedule; `step` trains on one batch."""

    def __init__(self, config, vocab_size: int, bos_id: int):
        m, opt = config.model, config.optimizer
        self.model = MarianMTModel(MarianConfig(
            vocab_size=vocab_size, d_model=m.d_model, encoder_layers=m.num_encoder_layers,
            decoder_layers=m.num_decoder_layers, encoder_attention_heads=m.num_heads,
            decoder_attention_heads=m.num_heads, encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff,
            activation_function="relu", dropout=m.dropout_rate, attention_dropout=m.attention_dropout_rate,
            activation_dropout=m.dropout_rate, max_position_embeddings=m.max_len, scale_embedding=True,
            share_encoder_decoder_embeddings=True, tie_word_embeddings=True, pad_token_id=0,
            decoder_start_token_id=bos_id, use_cache=False,
        ))
        assert self.model.lm_head.weight is self.model.model.shared.weight
        self.model.train()
        self.bos_id = bos_id
        # torch spreads `label_smoothing` over all V tokens, ours over the V - 1 others: the same targets.
        self.smoothing = opt.label_smoothing * vocab_size / (vocab_size - 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=(opt.b1, opt.b2), eps=opt.eps)
        scale, warmup = opt.learning_rate * m.d_model**-0.5, opt.warmup_steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda count: scale * min((count + 1) ** -0.5, (count + 1) * warmup**-1.5))

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        decoder_inputs = F.pad(targets[:, :-1], (1, 0), value=self.bos_id)
        # The causal mask alone keeps real target positions off the trailing padding.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=FLAGS.autocast):
            logits = self.model(input_ids=inputs, attention_mask=(inputs > 0).long(),
                                decoder_input_ids=decoder_inputs).logits
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0,
                                   label_smoothing=self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()


def time_fixed(config, steps: int) -> float:
    """Median seconds per train step on one random 64 x 32 batch."""
    vocab_size = config.data.vocab_size
    trainer = Trainer(config, vocab_size, bos_id=2)
    inputs, targets = torch.randint(4, vocab_size, (2, 64, 32), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        trainer.step(inputs, targets)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_real(config, steps: int) -> float:
    """Non-padding source + target tokens per second over the first `steps` training batches."""
    with tempfile.TemporaryDirectory() as workdir:  # the tokenizer's copy
        task = TranslationTask(config, workdir, sharding.make_mesh(devices=jax.devices()[:1]))
        batches = [task.train_batches()[i] for i in range(max(steps, WARMUP_STEPS))]
    trainer = Trainer(config, task.tokenizer.vocab_size, task.tokenizer.bos_id)

    def train(batch):
        trainer.step(torch.from_numpy(batch["inputs"]).long(), torch.from_numpy(batch["targets"]).long())

    for batch in batches[:WARMUP_STEPS]:
        train(batch)
    tokens = sum(np.count_nonzero(b["inputs"]) + np.count_nonzero(b["targets"]) for b in batches[:steps])
    start = time.perf_counter()
    for batch in batches[:steps]:
        train(batch)
    return tokens / (time.perf_counter() - start)


def main(_):
    torch.set_num_threads(os.cpu_count())
    torch.set_float32_matmul_precision(FLAGS.float32_matmul_precision)
    config = FLAGS.config.copy_and_resolve_references()
    print(f"Marian (post-LN; the config has pre_ln={config.model.pre_ln}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 matmul precision "
          f"{FLAGS.float32_matmul_precision}{', bfloat16 autocast' if FLAGS.autocast else ''}", flush=True)
    if FLAGS.fixed:
        print(f"pytorch fixed 64x32: {time_fixed(config, FLAGS.steps):.3f} s/step", flush=True)
    if FLAGS.real:
        print(f"pytorch real data: {time_real(config, FLAGS.steps):,.0f} non-pad src+tgt tokens/s "
              f"over {FLAGS.steps} steps", flush=True)


if __name__ == "__main__":
    app.run(main)
