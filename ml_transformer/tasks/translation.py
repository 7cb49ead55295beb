"""Translation: the embedded Bible corpus, SentencePiece, the encoder-decoder model, BLEU."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ml_transformer import attention_maps, decode, evaluate
from ml_transformer.data import bible, pipeline
from ml_transformer.data.tokenizer import Tokenizer, cached_tokenizer
from ml_transformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.train import partitioning
from ml_transformer.train.losses import summarize, token_metrics
from ml_transformer.train.steps import eval_step

def model_config(config, vocab_size: int, bos_id: int) -> Seq2SeqConfig:
    m = config.model
    block = BlockConfig(
        d_model=m.d_model,
        num_heads=m.num_heads,
        d_ff=m.d_ff,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        pre_ln=m.pre_ln,
        dtype=jnp.dtype(m.dtype),
        attention_impl=m.attention_impl or None,
    )
    return Seq2SeqConfig(
        vocab_size=vocab_size,
        block=block,
        num_encoder_layers=m.num_encoder_layers,
        num_decoder_layers=m.num_decoder_layers,
        max_len=m.max_len,
        position=m.position,
        share_embeddings=m.share_embeddings,
        tie_output=m.tie_output,
        bos_id=bos_id,
    )


def resolve_pair_settings(config) -> None:
    """Fills the config fields left None that follow from `config.data.pair` (character
    coverage, BLEU tokenization): after the command line's overrides, so that they follow
    an overridden pair too."""
    if config.data.character_coverage is None:
        config.data.character_coverage = bible.CHARACTER_COVERAGE[config.data.pair]
    if config.decode.bleu_tokenize is None:
        config.decode.bleu_tokenize = bible.BLEU_TOKENIZE[config.data.pair]


def prepare_tokenizer(config, builder, workdir: str) -> Tokenizer:
    """The run's tokenizer: `workdir/tokenizer.model`, else the joint one trained once on
    this pair's training split (cached beside the prepared data, named for its vocabulary
    size and character coverage), copied into the workdir."""

    def texts():
        sources, targets = pipeline.read_texts(builder.as_data_source(split="train"))
        return sources + targets

    d = config.data
    cache = os.path.join(os.fspath(builder.data_dir), f"spm-{d.vocab_size}-coverage{d.character_coverage:g}.model")
    return cached_tokenizer(cache, workdir, d.vocab_size, texts, d.character_coverage)


def seq2seq_loss(model: Seq2Seq, smoothing: float, params, batch: dict, rng, train: bool):
    """(mean label-smoothed loss per target token, metric sums) under teacher forcing."""
    rngs = {"dropout": rng} if train else {}
    logits = model.apply({"params": params}, batch["inputs"], batch["targets"], train=train, rngs=rngs)
    sums = token_metrics(logits, batch["targets"], smoothing)
    return sums["loss_sum"] / jnp.maximum(sums["tokens"], 1.0), sums


def translate(model: Seq2Seq, params, inputs, *, beam_size: int, alpha: float, extra_len: int, bos_id: int,
              eos_id: int, min_len: int = 1):
    """Output tokens `[B, len(inputs[0]) + extra_len]` for source tokens `[B, Ls]`: greedy
    when `beam_size` is 1, else the best beam; at most source length + `extra_len` tokens,
    at least `min_len` before EOS."""
    max_len = inputs.shape[1] + extra_len
    variables = {"params": params}
    state = model.apply(variables, inputs, max_len, method=Seq2Seq.init_decode_state)
    step_fn = functools.partial(model.apply, variables, method=Seq2Seq.decode_step)
    kwargs = dict(batch_size=inputs.shape[0], max_len=max_len, min_len=min_len, bos_id=bos_id, eos_id=eos_id,
                  max_lens=jnp.sum(inputs > 0, axis=1) + extra_len)
    if beam_size == 1:
        return decode.greedy_search(step_fn, state, **kwargs)
    tokens, _ = decode.beam_search(step_fn, state, beam_size=beam_size, alpha=alpha, **kwargs)
    return tokens[:, 0]


class TranslationTask:
    """Everything the trainer and the eval/predict modes need for translation."""

    unit = "tokens"

    def __init__(self, config, workdir: str, mesh):
        self.config, self.mesh = config, mesh
        builder = bible.prepare(config.data.pair, config.data.data_dir or None)
        resolve_pair_settings(config)
        self.sources = builder.as_data_source()
        self.tokenizer = prepare_tokenizer(config, builder, workdir)
        self.model = Seq2Seq(model_config(config, self.tokenizer.vocab_size, self.tokenizer.bos_id))
        self.batch_multiple = partitioning.row_multiple(mesh, config.micro_batches)
        self.eval_batch_size = partitioning.padded_rows(config.batch_size, self.batch_multiple)
        # Decoding runs to the padded source length + extra_len positions, within max_len.
        room = config.model.max_len - config.decode.extra_len
        self.max_source_tokens = room // pipeline.EVAL_LENGTH_MULTIPLE * pipeline.EVAL_LENGTH_MULTIPLE
        if self.max_source_tokens < 1:
            raise ValueError(f"config.decode.extra_len={config.decode.extra_len}: leaves no room for a source "
                             f"within config.model.max_len={config.model.max_len}")
        self._train_batches = None
        self._translate = jax.jit(
            functools.partial(
                translate, self.model, alpha=config.decode.alpha, extra_len=config.decode.extra_len,
                min_len=config.decode.min_len, bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id,
            ),
            static_argnames=("beam_size",),
        )
        self._eval_step = jax.jit(functools.partial(eval_step, loss_fn=self.loss_fn))

    # ---------------------------------------------------------------- model and loss
    def init_params(self, rng):
        dummy = jnp.ones((self.batch_multiple, 8), jnp.int32)
        return self.model.init(rng, dummy, dummy)["params"]

    def loss_fn(self, params, batch, rng, train: bool):
        return seq2seq_loss(self.model, self.config.optimizer.label_smoothing, params, batch, rng, train)

    # ---------------------------------------------------------------- data
    @functools.cache
    def encoded(self, split: str):
        """(input ids, target ids) of a split, in order."""
        return pipeline.encode_split(self.sources[split], self.tokenizer)

    @functools.cache
    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (sources, references) of a split, in order."""
        return pipeline.read_texts(self.sources[split])

    def train_batches(self) -> pipeline.TrainBatches:
        if self._train_batches is None:
            inputs, targets = self.encoded("train")
            d = self.config.data
            self._train_batches = pipeline.TrainBatches(
                inputs, targets, seed=self.config.seed, max_len=d.max_len,
                batch_tokens=d.batch_tokens, batch_multiple=self.batch_multiple,
            )
            logging.info(
                "Training data: %d pairs, %d dropped as longer than %d tokens; %d batches per epoch; %s",
                len(inputs), self._train_batches.num_dropped, d.max_len,
                self._train_batches.batches_per_epoch, self._train_batches.batch_sizes,
            )
        return self._train_batches

    # ---------------------------------------------------------------- decoding
    def search(self, params, inputs: list[np.ndarray], beam_size: int) -> list[np.ndarray]:
        """Output ids (EOS included) for encoded sources, in order."""
        outputs = [np.zeros(0, np.int32)] * len(inputs)
        batches = pipeline.eval_batches(
            inputs, inputs, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple
        )
        for batch in batches:
            tokens = self._translate(params, self._global(batch)["inputs"], beam_size=beam_size)
            for i, row in zip(partitioning.all_rows(batch["index"]), partitioning.all_rows(tokens)):
                if i >= 0:
                    outputs[i] = row[: np.count_nonzero(row)]
        return outputs

    def translate_ids(self, params, inputs: list[np.ndarray], beam_size: int) -> list[str]:
        """Detokenized translations of encoded sources, in order."""
        return [self.tokenizer.decode(ids) for ids in self.search(params, inputs, beam_size)]

    def encode_lines(self, lines: list[str], numbers: list[int]) -> list[np.ndarray]:
        """Source ids of input lines (line `numbers[i]` of the input is `lines[i]`); a line
        of more than `max_source_tokens` tokens (EOS included) is cut to them, with a
        warning naming the line."""
        encoded = pipeline.encode_texts(lines, self.tokenizer)
        for i, (number, ids) in enumerate(zip(numbers, encoded)):
            if len(ids) > self.max_source_tokens:
                logging.warning("input line %d: %d tokens, more than the %d this model translates "
                                "(config.model.max_len=%d, config.decode.extra_len=%d); translating its first %d",
                                number, len(ids), self.max_source_tokens, self.config.model.max_len,
                                self.config.decode.extra_len, self.max_source_tokens - 1)
                encoded[i] = np.append(ids[: self.max_source_tokens - 1], self.tokenizer.eos_id).astype(np.int32)
        return encoded

    def predict(self, params, lines: list[str], numbers: list[int]) -> list[str]:
        """The translation of each input line (`encode_lines`)."""
        return self.translate_ids(params, self.encode_lines(lines, numbers), self.config.decode.beam_size)

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """For each source line and its beam-search translation, PNG heatmaps of encoder
        self-attention, decoder self-attention and encoder-decoder attention of one layer
        (and head, or the mean over heads), from the model's own forward pass."""
        sources = self.encode_lines(lines, numbers)
        paths = []
        for n, (source, target) in enumerate(zip(sources, self.search(params, sources, self.config.decode.beam_size))):
            _, state = self.model.apply({"params": params}, source[None], target[None], mutable=["intermediates"])
            weights = attention_maps.collect(state["intermediates"])
            src, tgt = self.tokenizer.pieces(source), self.tokenizer.pieces(target)
            for kind, rows, columns in [
                ("encoder/*/self_attention", src, src),
                ("decoder/*/self_attention", tgt, tgt),
                ("decoder/*/cross_attention", tgt, src),
            ]:
                picked = attention_maps.pick(weights, kind, layer, head)
                paths.append(attention_maps.heatmap(*picked, rows, columns, out_dir, n))
        return paths

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, params, split: str, step: int, *, full: bool = False):
        """Loss metrics over the split and BLEU: greedy on the first `decode.eval_examples`
        sentences during training, beam search on the first `decode.final_examples` (0: all)
        when `full`.

        Returns (metrics, rows of (source, reference, hypothesis) that were decoded).
        """
        inputs, targets = self.encoded(split)
        sums = None
        batches = pipeline.eval_batches(
            inputs, targets, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple
        )
        for batch in batches:
            batch_sums = self._eval_step(params, self._global(batch))
            sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
        metrics = summarize(jax.device_get(sums), self.unit)
        limit = self.config.decode.final_examples if full else self.config.decode.eval_examples
        count = min(limit or len(inputs), len(inputs))
        beam = self.config.decode.beam_size if full else 1
        hypotheses = self.translate_ids(params, inputs[:count], beam)
        sources, references = (texts[:count] for texts in self.texts(split))
        metrics["bleu"] = evaluate.bleu(hypotheses, references, self.config.decode.bleu_tokenize)
        metrics["bleu_examples"] = count
        metrics["beam_size"] = beam
        return metrics, list(zip(sources, references, hypotheses))

    def _global(self, batch: dict) -> dict:
        return partitioning.to_global({k: batch[k] for k in ("inputs", "targets")}, self.mesh)
