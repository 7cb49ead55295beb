"""SentencePiece subword tokenizer with fixed special ids: pad 0, unk 1, bos 2, eos 3."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence

import sentencepiece as spm
from absl import logging

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.model"  # a run's own copy, in its workdir
# Stored in the model file, so a fixed value keeps training byte-for-byte reproducible.
_TRAIN_THREADS = 2


class Tokenizer:
    """Text <-> ids; every encoded sequence ends with EOS."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self._sp = processor

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, text: str) -> list[int]:
        """Ids of `text` followed by EOS."""
        return self._sp.encode(text) + [EOS_ID]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` of each text."""
        return [ids + [EOS_ID] for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOS, ignoring pad and bos."""
        kept = []
        for i in map(int, ids):
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                kept.append(i)
        return self._sp.decode(kept)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The subword piece of each id (e.g. for labelling attention pictures)."""
        return [self._sp.id_to_piece(int(i)) for i in ids]


def load_tokenizer(model_path: str) -> Tokenizer:
    """Loads a model file; raises an error naming the file if it is missing or unusable."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f'SentencePiece model not found: {model_path}')
    try:
        processor = spm.SentencePieceProcessor(model_file=model_path)
    except (OSError, RuntimeError) as e:
        raise ValueError(f'Not a SentencePiece model: {model_path} ({e})') from e
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(f'{model_path}: special ids (pad, unk, bos, eos) are {ids}, '
                         f'expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}')
    return Tokenizer(processor)


def train_tokenizer(texts: Iterable[str], model_path: str, vocab_size: int, *,
                    model_type: str = 'unigram',
                    character_coverage: float = 0.9995) -> Tokenizer:
    """Trains a model on `texts` in memory and writes it atomically to `model_path`.

    The same texts and settings give the same model file.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=_TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary smaller than the characters it must cover
        raise ValueError(f'config.data.vocab_size={vocab_size} with config.data.character_coverage='
                         f'{character_coverage:g}: SentencePiece cannot train ({str(e).split("] ")[-1]})') from None
    directory = os.path.dirname(os.path.abspath(model_path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix='.tmp', delete=False) as f:
        f.write(model.getvalue())
    os.chmod(f.name, 0o644)
    os.replace(f.name, model_path)
    return load_tokenizer(model_path)


def cached_tokenizer(cache_path: str, workdir: str, vocab_size: int,
                     texts: Callable[[], Sequence[str]], character_coverage: float = 0.9995) -> Tokenizer:
    """The run's tokenizer: `workdir/tokenizer.model` if present, else the model at
    `cache_path` (trained on `texts()` on first use) copied into the workdir."""
    own = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(own):
        if not os.path.exists(cache_path):
            logging.info("Training a %d-piece SentencePiece model for %s", vocab_size, cache_path)
            train_tokenizer(texts(), cache_path, vocab_size, character_coverage=character_coverage)
        os.makedirs(workdir, exist_ok=True)
        shutil.copyfile(cache_path, own)
    tokenizer = load_tokenizer(own)
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"{own}: {tokenizer.vocab_size} pieces, but config.data.vocab_size={vocab_size}")
    return tokenizer
