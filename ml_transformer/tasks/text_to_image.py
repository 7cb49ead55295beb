"""Text-to-image generation (a small DALL-E): a decoder-only model over captioned digits.

The model reads a caption's words and generates the image's 64 pixel tokens left to
right (`data.digit_captions`); only the pixel predictions are scored. Classifier-free
guidance: training replaces the caption with the empty one with probability
`config.data.caption_dropout`, and sampling mixes the conditional and unconditional
next-token logits with `config.decode.guidance_scale` (1: the conditional model alone).
Evaluation reports the per-pixel-token loss and perplexity; a full evaluation also draws
`decode.num_samples` images of each digit ("the digit 0" … "the digit 9") as one PNG
grid. `--mode=predict` writes one grid per caption line and prints its path.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from ml_transformer import sharding
from ml_transformer.data import digit_captions as dc
from ml_transformer.image_grid import write_grid
from ml_transformer.tasks.base import Task, summed
from ml_transformer.tasks.generation import sample_in_batches, sample_tokens
from ml_transformer.tasks.language_model import decoder_only, draw_self_attention, next_token_loss
from ml_transformer.train.losses import summarize
from ml_transformer.train.steps import eval_step

PROMPT_WIDTH = dc.MAX_CAPTION_WORDS + 2  # BOS, words, SEP: the caption region of a sequence


class TextToImageTask(Task):
    """Everything the trainer and the modes need for captioned-digit generation."""

    unit = "tokens"
    row_names = ("caption", "images")

    def __init__(self, config, workdir: str, mesh):
        self.config, self.mesh, self.workdir = config, mesh, workdir
        if config.model.max_len < dc.SEQUENCE_LENGTH:
            raise ValueError(f"config.model.max_len={config.model.max_len}: a sequence needs {dc.SEQUENCE_LENGTH}")
        self.data = dc.captioned_digits(config.data.data_dir or None, config.data.caption_dropout)
        self.model = decoder_only(config, dc.VOCAB_SIZE)
        self.batch_multiple = sharding.row_multiple(mesh, config.micro_batches)
        self.eval_batch_size = sharding.padded_rows(config.batch_size, self.batch_multiple)
        self._eval_step = jax.jit(functools.partial(eval_step, loss_fn=self.loss_fn))
        self._sample = jax.jit(functools.partial(sample_tokens, self.model, eos_id=dc.SEP_ID,
                                                 max_new_tokens=dc.IMAGE_TOKENS + 1,
                                                 allowed=np.arange(dc.VOCAB_SIZE) >= dc.PIXEL_OFFSET),
                               static_argnames=("temperature", "top_k", "top_p", "cached"))

    def init_params(self, rng):
        return self.model.init(rng, jnp.ones((self.batch_multiple, 8), jnp.int32))["params"]

    def loss_fn(self, params, batch, rng, train: bool):
        return next_token_loss(self.model, self.config.optimizer.label_smoothing, params, batch, rng, train)

    @functools.cache
    def train_batches(self):
        return self.data.train_batches(seed=self.config.seed, batch_size=self.config.batch_size,
                                       batch_multiple=self.batch_multiple)

    def evaluate(self, params, split: str, step: int, *, full: bool = False):
        """Loss, perplexity and accuracy of the pixel tokens of a split's captioned images;
        when `full`, also a grid of generated images of every digit."""
        batches = self.data.eval_batches(split, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple)
        sums = summed(lambda batch: self._eval_step(params, self._global(batch)), batches)
        metrics = {**summarize(sums, self.unit), "tokens": int(sums["tokens"])}
        if not full:
            return metrics, None
        captions = [dc.caption(d, 1) for d in range(10)]
        path = os.path.join(self.workdir, "samples", f"step{step}-digits.png")
        write_grid(self.generate(params, captions), path)
        return metrics, [(", ".join(captions[:2]) + ", …", path)]

    def generate(self, params, captions: list[str], guidance_scale: float | None = None, num_samples: int | None = None,
                 cached: bool = True) -> np.ndarray:
        """uint8 images `[len(captions), num_samples, 8, 8, 1]` sampled for each caption
        (`decode.num_samples` and `decode.guidance_scale` unless given); the same
        `decode.seed` gives the same images."""
        d = self.config.decode
        scale = d.guidance_scale if guidance_scale is None else guidance_scale
        count = num_samples or d.num_samples
        prompts = [np.asarray(dc.caption_ids(c), np.int32) for c in captions for _ in range(count)]
        guided = {} if scale == 1 else {"unconditional": np.array(dc.EMPTY_CAPTION, np.int32),
                                        "guidance_scale": jnp.float32(scale)}
        tokens = sample_in_batches(self._sample, params, prompts, self.mesh, batch_size=self.eval_batch_size,
                                   batch_multiple=self.batch_multiple, seed=d.seed, width=PROMPT_WIDTH,
                                   temperature=d.temperature, top_k=d.top_k, top_p=d.top_p, cached=cached, **guided)
        images = np.stack([dc.image_from_tokens(t[: dc.IMAGE_TOKENS]) for t in tokens])
        return images.reshape(len(captions), count, *images.shape[1:])

    def predict(self, params, lines: list[str], numbers: list[int]) -> list[str]:
        """For each caption line, the path of a PNG grid of its `decode.num_samples` images
        (`DIR/samples/line<N>.png`, replaced by the next prediction)."""
        _check_captions(lines, numbers)
        images = self.generate(params, lines)
        return [write_grid(images[i:i + 1], os.path.join(self.workdir, "samples", f"line{number}.png"))
                for i, number in enumerate(numbers)]

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """For each caption and its first generated image, a PNG heatmap of the causal
        self-attention over the caption's words and the pixel tokens."""
        _check_captions(lines, numbers)
        images = self.generate(params, lines, num_samples=1)
        paths = []
        for n, (line, image) in enumerate(zip(lines, images)):
            tokens = np.concatenate([dc.caption_ids(line), dc.pixel_tokens(image[0])])
            labels = [dc.token_name(t) for t in tokens]
            paths.append(draw_self_attention(self.model, params, tokens, labels, layer, head, out_dir, n))
        return paths

    def _global(self, batch: dict) -> dict:
        return sharding.to_global({k: batch[k] for k in ("inputs", "labels")}, self.mesh)


def _check_captions(lines: list[str], numbers: list[int]) -> None:
    """ValueError naming the input line of the first caption `caption_ids` refuses."""
    for number, line in zip(numbers, lines):
        try:
            dc.caption_ids(line)
        except ValueError as e:
            raise ValueError(f"input line {number}: {e}") from None
