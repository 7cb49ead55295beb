"""Text classification datasets for `tasks.classification` (see its contract).

- `bible_testament` (embedded): English verses (World English Bible, the `source` side of
  the Bible builder's en-fr pair) labelled by testament, 'old' (books 1-39) or 'new'
  (40-66); the builder's chapter-based train/validation/test splits, as in translation.
- `imdb_reviews` (TFDS catalog; prepare it once with network access): movie reviews
  labelled 'neg' or 'pos', `<br />` tags replaced by spaces. The catalog's `test` split is
  the test split; the last 10% of its `train` split (in the stored order, which TFDS
  shuffled when preparing it) is held out as validation, the first 90% is train.

Texts become SentencePiece ids without BOS or EOS, truncated to `config.data.max_len`
tokens (keeping the start) and padded with 0 to that length. The tokenizer
(`config.data.vocab_size` pieces) is trained once on the training split, cached beside
the data and copied into the workdir as `tokenizer.model`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ml_transformer import interop, sharding
from ml_transformer.data import bible
from ml_transformer.data.pipeline import TrainBatches, decode_text
from ml_transformer.data.tokenizer import Tokenizer, cached_tokenizer

SPLITS = ("train", "validation", "test")
BIBLE_PAIR = "en-fr"
FIRST_NEW_TESTAMENT_BOOK = 40
IMDB_VALIDATION_FRACTION = 0.1

Reader = Callable[[str], tuple[list[str], np.ndarray]]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")


def _bible_testament_split(builder: bible.BibleParallel, split: str) -> tuple[list[str], np.ndarray]:
    """(English verses, labels: 0 Old Testament, 1 New) of a split of the Bible builder."""
    _check_split(split)
    records = list(builder.as_data_source(split=split))
    labels = np.array([r["book"] >= FIRST_NEW_TESTAMENT_BOOK for r in records], np.int32)
    return [decode_text(r["source"]) for r in records], labels


def bible_testament_reader(builder: bible.BibleParallel) -> Reader:
    """`read(split)` → (English verses, labels: 0 Old Testament, 1 New) of a split of
    `builder`, each split read once."""
    return functools.cache(functools.partial(_bible_testament_split, builder))


def clean_review(text: str) -> str:
    """An IMDB review with its HTML line breaks replaced by spaces."""
    return text.replace("<br />", " ")


def _imdb_reviews_split(catalog: Callable[[str], list[dict]], split: str) -> tuple[list[str], np.ndarray]:
    """(reviews, labels) of a split, from `catalog(name)`: the records of a catalog split."""
    _check_split(split)
    records = catalog("test" if split == "test" else "train")
    if split != "test":
        cut = len(records) - int(len(records) * IMDB_VALIDATION_FRACTION)
        records = records[:cut] if split == "train" else records[cut:]
    labels = np.array([r["label"] for r in records], np.int32)
    return [clean_review(decode_text(r["text"])) for r in records], labels


def imdb_reviews_reader(data_dir: str) -> Reader:
    """`read(split)` → (reviews, labels: 0 neg, 1 pos) of a split of the catalog's
    `imdb_reviews` in `data_dir`, each split read once."""
    catalog = functools.cache(lambda name: list(tfds.data_source("imdb_reviews", split=name, data_dir=data_dir)))
    return functools.cache(functools.partial(_imdb_reviews_split, catalog))


def _classification_batch(batch: dict) -> dict:
    """A `TrainBatches` batch whose one-token targets are label + 1 (0 on empty rows)."""
    target = batch["targets"][:, 0]
    return {"inputs": batch["inputs"], "labels": np.maximum(target - 1, 0), "valid": target > 0}


class TextClassification:
    """A dataset of the classification contract over texts, encoded once per split.

    `read(split)` gives (texts, int labels); `clean` prepares raw predict inputs as the
    reader prepared its texts. `batch_tokens` > 0 buckets training batches by length (at
    most that many tokens each); 0 gives `batch_size` rows of `max_len` tokens.
    """

    def __init__(self, read: Reader, tokenizer: Tokenizer, label_names: list[str], *, max_len: int,
                 batch_tokens: int = 0, clean: Callable[[str], str] = str.strip):
        self._read, self.tokenizer, self.label_names = read, tokenizer, label_names
        self.max_len, self.batch_tokens, self._clean = max_len, batch_tokens, clean
        self.num_classes = len(label_names)
        self.input_spec = ((max_len,), np.int32)

    def _ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids `[N, max_len]` padded with 0, lengths `[N]`) of cleaned texts."""
        ids = np.zeros((len(texts), self.max_len), np.int32)
        lengths = np.zeros(len(texts), np.int64)
        ours = isinstance(self.tokenizer, Tokenizer)  # a pretrained one's special tokens are the model's inputs
        for row, pieces in enumerate(self.tokenizer.encode_batch(texts)):
            pieces = (pieces[:-1] if ours else pieces)[: self.max_len]  # our EOS is not read
            ids[row, : len(pieces)] = pieces
            lengths[row] = len(pieces)
        return ids, lengths

    def encode(self, lines: Sequence[str]) -> np.ndarray:
        """Raw texts → padded ids `[N, max_len]`, for predict."""
        return self._ids([self._clean(line) for line in lines])[0]

    @functools.cache
    def encoded(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids `[N, max_len]`, lengths `[N]`, labels `[N]`) of a split, in order."""
        texts, labels = self._read(split)
        ids, lengths = self._ids(texts)
        logging.info("%s: %d texts, %d of them at the limit of %d tokens (truncated)", split, len(texts),
                     int(np.sum(lengths == self.max_len)), self.max_len)
        return ids, lengths, labels

    def train_batches(self, *, seed: int, batch_size: int, batch_multiple: int) -> grain.MapDataset:
        """Infinite; item `step` = {'inputs', 'labels', 'valid'} of that step, a function of
        (seed, step) (`pipeline.TrainBatches`: every example once per epoch, epochs
        shuffled by (seed, epoch)); `valid` is False on the rows completing an epoch."""
        ids, lengths, labels = self.encoded("train")
        sizes = {"batch_tokens": self.batch_tokens} if self.batch_tokens else {"batch_size": batch_size}
        batches = TrainBatches(
            [row[:n] for row, n in zip(ids, lengths)], [np.array([y + 1], np.int32) for y in labels],
            seed=seed, max_len=self.max_len, batch_multiple=batch_multiple, **sizes,
        )
        return batches.map(_classification_batch)

    def eval_batches(self, split: str, *, batch_size: int, batch_multiple: int) -> grain.MapDataset:
        """Every example once, in order: {'inputs' `[B, max_len]`, 'labels', 'valid'}, this
        process's rows of batches of `batch_size` rounded up to a multiple of
        `batch_multiple`; the last batch is completed with padding rows (valid False)."""
        ids, _, labels = self.encoded(split)
        rows = sharding.padded_rows(batch_size, batch_multiple)

        def batch(start: int) -> dict:
            count = min(rows, len(ids) - start)
            out = {"inputs": np.zeros((rows, self.max_len), np.int32), "labels": np.zeros(rows, np.int32),
                   "valid": np.arange(rows) < count}
            out["inputs"][:count] = ids[start:start + count]
            out["labels"][:count] = labels[start:start + count]
            return {k: sharding.process_rows(v) for k, v in out.items()}

        return grain.MapDataset.range(0, len(ids), rows).map(batch)


def bible_testament(config, workdir: str) -> TextClassification:
    """English Bible verses labelled 'old' or 'new' (testament)."""
    d = config.data
    builder = bible.prepare(BIBLE_PAIR, d.data_dir or None)
    read = bible_testament_reader(builder)
    cache = os.path.join(os.fspath(builder.data_dir), f"spm-source-{d.vocab_size}.model")
    tokenizer = interop.pretrained_tokenizer(config) or cached_tokenizer(cache, workdir, d.vocab_size,
                                                                         lambda: read("train")[0])
    return TextClassification(read, tokenizer, ["old", "new"], max_len=d.max_len, batch_tokens=d.batch_tokens)


def imdb_reviews(config, workdir: str) -> TextClassification:
    """IMDB movie reviews labelled 'neg' or 'pos'."""
    d = config.data
    data_dir = d.data_dir or tfds.core.constants.DATA_DIR
    read = imdb_reviews_reader(data_dir)
    cache = os.path.join(data_dir, "imdb_reviews", f"spm-{d.vocab_size}.model")
    tokenizer = interop.pretrained_tokenizer(config) or cached_tokenizer(cache, workdir, d.vocab_size,
                                                                         lambda: read("train")[0])
    return TextClassification(read, tokenizer, ["neg", "pos"], max_len=d.max_len, batch_tokens=d.batch_tokens,
                              clean=lambda line: clean_review(line).strip())
