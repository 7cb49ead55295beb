"""Translation: the embedded Bible corpus, SentencePiece, the encoder-decoder model, BLEU."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ml_transformer import attention_maps, decode, evaluate, sharding
from ml_transformer.config_checks import set_fields
from ml_transformer.data import bible, pipeline
from ml_transformer.data.tokenizer import Tokenizer, cached_tokenizer
from ml_transformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.tasks.base import Task, summed
from ml_transformer.train.losses import summarize, token_metrics
from ml_transformer.train.steps import eval_step
from ml_transformer.workdir import read_json, save_json


def model_config(config, vocab_size: int, bos_id: int) -> Seq2SeqConfig:
    m = config.model
    return Seq2SeqConfig(
        vocab_size=vocab_size,
        block=BlockConfig.from_model_config(m),
        num_encoder_layers=m.num_encoder_layers,
        num_decoder_layers=m.num_decoder_layers,
        max_len=m.max_len,
        position=m.position,
        share_embeddings=m.share_embeddings,
        tie_output=m.tie_output,
        bos_id=bos_id,
        **set_fields(m, "scale_embeddings", "final_logits_bias"),
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
              eos_id: int, min_len: int = 1, penalty: str = "gnmt", cached: bool = True):
    """Output tokens `[B, len(inputs[0]) + extra_len]` for source tokens `[B, Ls]`: greedy
    when `beam_size` is 1, else the best beam of beam search with length penalty `penalty`
    and `alpha`; at most source length + `extra_len` tokens, at least `min_len` before EOS,
    never padding (0; transformers' OPUS-MT models ban it likewise).
    `cached=False` recomputes the decoder over the whole prefix at every step (benchmarks)."""
    max_len = inputs.shape[1] + extra_len
    variables = {"params": params}
    kwargs = dict(batch_size=inputs.shape[0], max_len=max_len, min_len=min_len, bos_id=bos_id, eos_id=eos_id,
                  max_lens=jnp.sum(inputs > 0, axis=1) + extra_len)
    step_fn, state, reorder = (cached_decoding if cached else uncached_decoding)(model, variables, inputs, max_len,
                                                                                beam_size)
    if beam_size == 1:
        return decode.greedy_search(step_fn, state, **kwargs)
    tokens, _ = decode.beam_search(step_fn, state, beam_size=beam_size, alpha=alpha, penalty=penalty, reorder=reorder,
                                   **kwargs)
    return tokens[:, 0]


def _no_padding(logits: jax.Array) -> jax.Array:  # padding is never an output (outputs hold it after EOS only)
    return logits.at[:, decode.PAD_ID].set(-jnp.inf)


def cached_decoding(model: Seq2Seq, variables, inputs, max_len: int, beams: int):
    """(step function, state, reorder) of `decode`'s searches with the cache, which has one
    row per source that its K beams read together, beam j writing column t * K + j at
    position t. With K > 1 the state adds `slots` `[B * K, max_len, K]`: in which beam's
    column each beam's positions are. Beam search reorders that table, never the cache."""
    memory, cache = model.apply(variables, inputs, max_len, beams, method=Seq2Seq.start_decoding)
    if beams == 1:
        def step_fn(tokens, cache):
            logits, cache = model.apply(variables, tokens, cache, memory, method=Seq2Seq.decode_step)
            return _no_padding(logits), cache

        return step_fn, cache, None

    own = jnp.tile(jnp.eye(beams, dtype=bool), (inputs.shape[0], 1))  # row b * K + j writes column j

    def step_fn(tokens, state):
        written = jnp.arange(max_len)[None, :, None] == state["cache"][0]["index"]
        slots = state["slots"] | (written & own[:, None, :])
        readable = slots.reshape(inputs.shape[0], 1, beams, max_len * beams)
        logits, cache = model.apply(variables, tokens, state["cache"], memory, readable, method=Seq2Seq.decode_step)
        return _no_padding(logits), {"cache": cache, "slots": slots}

    state = {"cache": cache, "slots": jnp.zeros((inputs.shape[0] * beams, max_len, beams), bool)}
    return step_fn, state, lambda state, origin: {**state, "slots": decode.gather_beams(state["slots"], origin)}


def uncached_decoding(model: Seq2Seq, variables, inputs, max_len: int, beams: int):
    """(step function, state, reorder) of `decode`'s searches recomputing the whole prefix
    at every step, for benchmarks; beam search repeats and reorders the prefix per beam."""
    memory, prefix = model.apply(variables, inputs, max_len, method=Seq2Seq.start_decoding_uncached)
    memory = decode.expand_to_beams(memory, beams)  # a constant of the step function: beams never reorder it

    def step_fn(tokens, prefix):
        logits, prefix = model.apply(variables, tokens, prefix, memory=memory, method=Seq2Seq.decode_step_uncached)
        return _no_padding(logits), prefix

    return step_fn, prefix, None


DECODING_FILE = "decoding.json"


class TranslationTask(Task):
    """Everything the trainer and the eval/predict modes need for translation."""

    unit = "tokens"

    def __init__(self, config, workdir: str, mesh):
        self.config, self.mesh = config, mesh
        builder = bible.prepare(config.data.pair, config.data.data_dir or None)
        resolve_pair_settings(config)
        self.sources = builder.as_data_source()
        self.tokenizer = prepare_tokenizer(config, builder, workdir)
        self.model = Seq2Seq(model_config(config, self.tokenizer.vocab_size, self.tokenizer.bos_id))
        self.batch_multiple = sharding.row_multiple(mesh, config.micro_batches)
        self.eval_batch_size = sharding.padded_rows(config.batch_size, self.batch_multiple)
        # Decoding runs to the padded source length + extra_len positions, within max_len.
        room = config.model.max_len - config.decode.extra_len
        self.max_source_tokens = room // pipeline.EVAL_LENGTH_MULTIPLE * pipeline.EVAL_LENGTH_MULTIPLE
        if self.max_source_tokens < 1:
            raise ValueError(f"config.decode.extra_len={config.decode.extra_len}: leaves no room for a source "
                             f"within config.model.max_len={config.model.max_len}")
        self._train_batches = None
        # (beam size, alpha) of full evaluations, predictions and attention pictures; when
        # beam search's `decode.alpha` is None, `choose_decoding` settles them per checkpoint.
        d = config.decode
        self._decoding = None if d.alpha is None and d.beam_size > 1 else (d.beam_size, d.alpha or 0.0)
        self._translate = jax.jit(  # alpha is traced: one compilation serves every alpha
            functools.partial(
                translate, self.model, extra_len=config.decode.extra_len, min_len=config.decode.min_len,
                bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id, penalty=config.decode.length_penalty,
            ),
            static_argnames=("beam_size", "cached"),
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
                bucket_boundaries=range(d.length_multiple, d.max_len, d.length_multiple),
            )
            logging.info(
                "Training data: %d pairs, %d dropped as longer than %d tokens; %d batches per epoch; %s",
                len(inputs), self._train_batches.num_dropped, d.max_len,
                self._train_batches.batches_per_epoch, self._train_batches.batch_sizes,
            )
        return self._train_batches

    # ---------------------------------------------------------------- decoding
    def search(self, params, inputs: list[np.ndarray], beam_size: int, alpha: float | None = None,
               cached: bool = True) -> list[np.ndarray]:
        """Output ids (EOS included) for encoded sources, in order (`translate`; `alpha`
        defaults to the chosen one), batches decoded side by side where that pays and each
        shape compiled ahead (`sharding.map_batches`)."""
        alpha = self.decoding[1] if alpha is None else alpha

        settings = {"alpha": jnp.float32(alpha), "beam_size": beam_size, "cached": cached}

        def compiled(batch):
            self._translate.lower(params, self._global(batch)["inputs"], **settings).compile()

        def decoded(batch):
            tokens = self._translate(params, self._global(batch)["inputs"], **settings)
            return sharding.all_rows(batch["index"]), sharding.all_rows(tokens)

        outputs = [np.zeros(0, np.int32)] * len(inputs)
        batches = pipeline.eval_batches(
            inputs, inputs, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple
        )
        for index, tokens in sharding.map_batches(decoded, batches, self.mesh, compile=compiled):
            for i, row in zip(index, tokens):
                if i >= 0:
                    outputs[i] = row[: np.count_nonzero(row)]
        return outputs

    def translate_ids(self, params, inputs: list[np.ndarray], beam_size: int, alpha: float | None = None) -> list[str]:
        """Detokenized translations of encoded sources, in order (`search`)."""
        return [self.tokenizer.decode(ids) for ids in self.search(params, inputs, beam_size, alpha)]

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
        return self.translate_ids(params, self.encode_lines(lines, numbers), *self.decoding)

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """For each source line and its beam-search translation, PNG heatmaps of encoder
        self-attention, decoder self-attention and encoder-decoder attention of one layer
        (and head, or the mean over heads), from the model's own forward pass."""
        sources = self.encode_lines(lines, numbers)
        paths = []
        for n, (source, target) in enumerate(zip(sources, self.search(params, sources, *self.decoding))):
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
    def choose_decoding(self, params, checkpoint: str, workdir: str) -> None:
        """Settles the length penalty when `decode.alpha` is None: the candidate (greedy, or
        beam search of `decode.beam_size` at each of `decode.alphas`) with the best BLEU on
        the first `decode.tune_examples` validation sentences, recorded in `DIR/decoding.json`
        for this checkpoint and read from there the next time. Full evaluations, predictions
        and attention pictures then decode with it."""
        d = self.config.decode
        if d.alpha is not None or d.beam_size == 1:
            return
        path = os.path.join(workdir, DECODING_FILE)
        settings = {"checkpoint": checkpoint, "split": "validation", "examples": d.tune_examples,
                    "beam_size": d.beam_size, "length_penalty": d.length_penalty, "alphas": list(d.alphas)}
        recorded = read_json(path)
        if recorded and {k: recorded.get(k) for k in settings} == settings:
            chosen = recorded["chosen"]
        else:
            chosen = self._tune_decoding(params, settings, path)
        self._decoding = chosen["beam_size"], chosen["alpha"]

    @property
    def decoding(self) -> tuple[int, float]:
        """(beam size, alpha) of full evaluations and predictions."""
        if self._decoding is None:
            raise RuntimeError("config.decode.alpha is None: choose_decoding() settles it first")
        return self._decoding

    def _tune_decoding(self, params, settings: dict, path: str) -> dict:
        inputs = self.encoded("validation")[0][: settings["examples"]]
        references = self.texts("validation")[1][: len(inputs)]
        beam = settings["beam_size"]
        candidates = [(1, 0.0)] + [(beam, float(alpha)) for alpha in settings["alphas"]]
        bleu = {}
        for beam_size, alpha in candidates:
            hypotheses = self.translate_ids(params, inputs, beam_size, alpha)
            bleu[evaluate.search_name(beam_size, alpha)] = evaluate.bleu(
                hypotheses, references, self.config.decode.bleu_tokenize)
        beam_size, alpha = max(candidates, key=lambda c: bleu[evaluate.search_name(*c)])  # greedy first: it wins ties
        record = {**settings, "bleu": bleu, "chosen": {"beam_size": beam_size, "alpha": alpha}}
        if jax.process_index() == 0:
            print(f"decoding chosen on {len(inputs)} validation sentences: {evaluate.search_name(beam_size, alpha)} "
                  f"(BLEU {', '.join(f'{k} {v:.2f}' for k, v in bleu.items())})", flush=True)
            save_json(path, record)
        return record["chosen"]

    def evaluate(self, params, split: str, step: int, *, full: bool = False):
        """Loss metrics over the split and BLEU: greedy on the first `decode.eval_examples`
        sentences during training, beam search on the first `decode.final_examples` (0: all)
        when `full`.

        Returns (metrics, rows of (source, reference, hypothesis) that were decoded).
        """
        inputs, targets = self.encoded(split)
        batches = pipeline.eval_batches(
            inputs, targets, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple
        )
        metrics = summarize(summed(lambda batch: self._eval_step(params, self._global(batch)), batches), self.unit)
        limit = self.config.decode.final_examples if full else self.config.decode.eval_examples
        count = min(limit or len(inputs), len(inputs))
        beam, alpha = self.decoding if full else (1, 0.0)
        hypotheses = self.translate_ids(params, inputs[:count], beam, alpha)
        sources, references = (texts[:count] for texts in self.texts(split))
        metrics["bleu"] = evaluate.bleu(hypotheses, references, self.config.decode.bleu_tokenize)
        metrics["bleu_examples"] = count
        metrics["beam_size"] = beam
        if beam > 1:
            metrics["alpha"] = alpha
        return metrics, list(zip(sources, references, hypotheses))

    def _global(self, batch: dict) -> dict:
        return sharding.to_global({k: batch[k] for k in ("inputs", "targets")}, self.mesh)
