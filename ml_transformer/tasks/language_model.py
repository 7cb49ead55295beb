"""Language modelling: one Bible translation's verses, SentencePiece, the decoder-only model.

Each verse is one sequence: BOS, its pieces, EOS; the model predicts every piece and the
EOS. Evaluation reports the per-token loss and perplexity and the tokenizer-independent
bits per character: the summed NLL in bits over the split's characters, a verse of n
characters counting n + 1 (its end, predicted as EOS, stands for the newline ending it
in a text file). `--mode=predict` continues each input line, sampled as `config.decode`
says; a full evaluation also samples continuations of `config.decode.prompts`.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ml_transformer import attention_maps, interop, sharding
from ml_transformer.config_checks import set_fields
from ml_transformer.data import bible, pipeline
from ml_transformer.data.tokenizer import cached_tokenizer
from ml_transformer.models.decoder_only import DecoderOnly, DecoderOnlyConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.tasks.base import Task, summed
from ml_transformer.tasks.generation import sample_in_batches, sample_tokens
from ml_transformer.train.losses import summarize, token_metrics
from ml_transformer.train.steps import eval_step


def decoder_only(config, vocab_size: int) -> DecoderOnly:
    """The model of `config.model` over `vocab_size` tokens."""
    m = config.model
    return DecoderOnly(DecoderOnlyConfig(vocab_size=vocab_size, block=BlockConfig.from_model_config(m),
                                         num_layers=m.num_layers, max_len=m.max_len, position=m.position,
                                         **set_fields(m, "scale_embeddings")))


def next_token_loss(model: DecoderOnly, smoothing: float, params, batch: dict, rng, train: bool):
    """(mean loss per scored token, metric sums): the model reads `inputs` `[B, L]` and
    predicts `labels` `[B, L]` (the next token, 0 where nothing is scored); sums the
    batch's `characters` too when it has them."""
    rngs = {"dropout": rng} if train else {}
    logits = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs)
    sums = token_metrics(logits, batch["labels"], smoothing)
    if "characters" in batch:
        sums["characters"] = jnp.sum(batch["characters"])
    return sums["loss_sum"] / jnp.maximum(sums["tokens"], 1.0), sums


def bits_per_character(nll_sum: float, characters: float) -> float:
    """Summed NLL in nats → bits per character."""
    return nll_sum / math.log(2) / max(characters, 1.0)


def lm_batch(batch: dict, bos_id: int, characters: np.ndarray | None = None) -> dict:
    """A `pipeline` batch of verse ids (`targets`) → model `inputs` (`bos_id`, then the ids
    shifted right) and `labels`; with `characters` per verse, each row's count."""
    labels = batch["targets"]
    inputs = np.concatenate([np.full_like(labels[:, :1], bos_id), labels[:, :-1]], axis=1)
    inputs[labels == 0] = 0
    out = {"inputs": inputs, "labels": labels}
    if characters is not None:
        out["characters"] = np.where(batch["index"] >= 0, characters[np.maximum(batch["index"], 0)], 0)
    return out


def draw_self_attention(model: DecoderOnly, params, tokens: np.ndarray, labels: list[str], layer: int, head: int,
                        out_dir: str, index: int) -> str:
    """A PNG heatmap of the causal self-attention over `tokens` `[L]` (one layer, one head or
    the mean over heads), from the model's own forward pass; returns its path."""
    _, state = model.apply({"params": params}, tokens[None], mutable=["intermediates"])
    picked = attention_maps.pick(attention_maps.collect(state["intermediates"]), "layers_*/self_attention", layer, head)
    return attention_maps.heatmap(*picked, labels, labels, out_dir, index)


class LanguageModelTask(Task):
    """Everything the trainer and the modes need for a language model of Bible verses."""

    unit = "tokens"
    row_names = ("prompt", "continuation")

    def __init__(self, config, workdir: str, mesh):
        self.config, self.mesh = config, mesh
        d = config.data
        pair = bible.LANGUAGES.get(d.language, ("", ""))[0]
        if not pair:
            raise ValueError(f"config.data.language={d.language!r}: not one of {', '.join(bible.LANGUAGES)}")
        builder = bible.prepare(pair, d.data_dir or None)
        cache = os.path.join(os.fspath(builder.data_dir), f"spm-{d.language}-{d.vocab_size}.model")
        self.tokenizer = interop.pretrained_tokenizer(config) or cached_tokenizer(
            cache, workdir, d.vocab_size, lambda: self.verses("train"), bible.CHARACTER_COVERAGE[pair])
        self.model = decoder_only(config, self.tokenizer.vocab_size)
        self.batch_multiple = sharding.row_multiple(mesh, config.micro_batches)
        self.eval_batch_size = sharding.padded_rows(config.batch_size, self.batch_multiple)
        self.max_prompt_tokens = config.model.max_len - config.decode.max_new_tokens
        if self.max_prompt_tokens < 1:
            raise ValueError(f"config.decode.max_new_tokens={config.decode.max_new_tokens}: leaves no room for a "
                             f"prompt within config.model.max_len={config.model.max_len}")
        self._eval_step = jax.jit(functools.partial(eval_step, loss_fn=self.loss_fn))
        self._sample = jax.jit(functools.partial(sample_tokens, self.model, eos_id=self.tokenizer.eos_id),
                               static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "cached"))

    # ---------------------------------------------------------------- model and loss
    def init_params(self, rng):
        return self.model.init(rng, jnp.ones((self.batch_multiple, 8), jnp.int32))["params"]

    def loss_fn(self, params, batch, rng, train: bool):
        return next_token_loss(self.model, self.config.optimizer.label_smoothing, params, batch, rng, train)

    # ---------------------------------------------------------------- data
    @functools.cache
    def verses(self, split: str) -> list[str]:
        return bible.read_verses(self.config.data.language, split, self.config.data.data_dir or None)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, ending with EOS; without the BOS that a pretrained tokenizer's
        template may put first, as the model's inputs add their own."""
        bos = self.tokenizer.bos_id
        return [ids[1:] if ids[:1] == [bos] else ids for ids in self.tokenizer.encode_batch(texts)]

    @functools.cache
    def encoded(self, split: str) -> list[np.ndarray]:
        """Ids of each verse of a split, ending with EOS."""
        return [np.asarray(ids, np.int32) for ids in self._ids(self.verses(split))]

    @functools.cache
    def train_batches(self):
        ids, d = self.encoded("train"), self.config.data
        batches = pipeline.TrainBatches(ids, ids, seed=self.config.seed, max_len=d.max_len,
                                        batch_tokens=d.batch_tokens, batch_multiple=self.batch_multiple)
        logging.info("Training data: %d verses, %d dropped as longer than %d tokens; %d batches per epoch",
                     len(ids), batches.num_dropped, d.max_len, batches.batches_per_epoch)
        return batches.map(functools.partial(lm_batch, bos_id=self.tokenizer.bos_id))

    def eval_batches(self, split: str):
        """Every verse of a split once, with its character count."""
        ids = self.encoded(split)
        longest = max(map(len, ids))
        if longest > self.config.model.max_len:
            raise ValueError(f"config.model.max_len={self.config.model.max_len}: the {split} split has a verse of "
                             f"{longest} tokens")
        characters = np.array([len(v) + 1 for v in self.verses(split)], np.float32)
        batches = pipeline.eval_batches(ids, ids, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple)
        return batches.map(functools.partial(lm_batch, bos_id=self.tokenizer.bos_id, characters=characters))

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, params, split: str, step: int, *, full: bool = False):
        """Loss, perplexity, accuracy and bits per character over the split; when `full`,
        also rows (prompt, continuation) sampled from `config.decode.prompts`."""
        sums = summed(lambda batch: self._eval_step(params, self._global(batch)), self.eval_batches(split))
        metrics = summarize(sums, self.unit)
        metrics["bits_per_char"] = bits_per_character(float(sums["nll_sum"]), float(sums["characters"]))
        metrics["tokens"], metrics["characters"] = int(sums["tokens"]), int(sums["characters"])
        rows = None
        if full and self.config.decode.prompts:
            prompts = list(self.config.decode.prompts)
            rows = list(zip(prompts, self.continuations(params, prompts, range(1, len(prompts) + 1))))
        return metrics, rows

    # ---------------------------------------------------------------- sampling
    def encode_prompts(self, lines: list[str], numbers) -> list[np.ndarray]:
        """BOS and the pieces of each line; a line too long to leave room for
        `decode.max_new_tokens` keeps its last pieces (with a warning naming the line)."""
        prompts = []
        for number, ids in zip(numbers, self._ids(lines)):
            ids = [self.tokenizer.bos_id] + ids[:-1]
            if len(ids) > self.max_prompt_tokens:
                logging.warning("input line %d: %d tokens, more than the %d a prompt may have (config.model.max_len=%d "
                                "less config.decode.max_new_tokens=%d); continuing its last %d", number, len(ids),
                                self.max_prompt_tokens, self.config.model.max_len,
                                self.config.decode.max_new_tokens, self.max_prompt_tokens)
                ids = ids[-self.max_prompt_tokens:]
            prompts.append(np.asarray(ids, np.int32))
        return prompts

    def sample(self, params, prompts: list[np.ndarray], cached: bool = True) -> list[np.ndarray]:
        """`decode.num_samples` sampled continuations (ids, EOS included) of each prompt, in
        order (prompt i's are rows i * num_samples ...); the same `decode.seed` gives the
        same samples, however many devices share the batch."""
        d = self.config.decode
        outputs = sample_in_batches(
            self._sample, params, [p for p in prompts for _ in range(d.num_samples)], self.mesh,
            batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple, seed=d.seed,
            max_width=self.max_prompt_tokens, max_new_tokens=d.max_new_tokens, temperature=d.temperature,
            top_k=d.top_k, top_p=d.top_p, cached=cached)
        return [row[: np.count_nonzero(row)] for row in outputs]

    def continuations(self, params, lines: list[str], numbers) -> list[str]:
        """For each line, its sampled continuations, tab-separated."""
        texts = [self.tokenizer.decode(ids) for ids in self.sample(params, self.encode_prompts(lines, numbers))]
        n = self.config.decode.num_samples
        return ["\t".join(texts[i:i + n]) for i in range(0, len(texts), n)]

    def predict(self, params, lines: list[str], numbers: list[int]) -> list[str]:
        """Each line's continuation(s), tab-separated."""
        return self.continuations(params, lines, numbers)

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """For each prompt and its (first) sampled continuation, a PNG heatmap of the causal
        self-attention of one layer (and head, or the mean over heads)."""
        prompts = self.encode_prompts(lines, numbers)
        continued = self.sample(params, prompts)[:: self.config.decode.num_samples]
        paths = []
        for n, (prompt, more) in enumerate(zip(prompts, continued)):
            tokens = np.concatenate([prompt, more])[: self.config.model.max_len]
            paths.append(draw_self_attention(self.model, params, tokens, self.tokenizer.pieces(tokens), layer, head,
                                             out_dir, n))
        return paths

    def _global(self, batch: dict) -> dict:
        return sharding.to_global({k: batch[k] for k in ("inputs", "labels", "characters")}, self.mesh)
