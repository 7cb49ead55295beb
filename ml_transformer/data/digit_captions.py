"""Captioned 8x8 digits as token sequences, for text-to-image generation (a small DALL-E).

A sequence is a caption in words, then the image's 64 pixels as tokens:

    [0 … 0, BOS, word, …, word, SEP, pixel₁, …, pixel₆₄]

the caption left-padded to `MAX_CAPTION_WORDS` so that the pixels always sit in the last
64 columns. Ids: 0 padding, 1 unknown (never produced), 2 BOS, 3 SEP (the end of the
caption), then the caption words (`WORDS`), then the pixel tokens: a pixel of value
v in 0..16 (scikit-learn's own scale; the builder stores round(v · 255 / 16)) is
`PIXEL_OFFSET + v`. A caption names the digit with one of `PHRASINGS`; the empty caption
(BOS, SEP) is the unconditional sequence of classifier-free guidance.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from ml_transformer import sharding
from ml_transformer.data import digits
from ml_transformer.data.images import epoch_order

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("a handwritten {word}", "the digit {digit}", "a drawing of the number {word}",
             "an image of a {digit}", "{word}", "the number {digit} written by hand")
PAD_ID, UNK_ID, BOS_ID, SEP_ID = 0, 1, 2, 3
WORDS = tuple(sorted({w for p in PHRASINGS for w in p.split() if "{" not in w} | set(NUMBER_WORDS)
                     | {str(d) for d in range(10)}))
WORD_IDS = {w: 4 + i for i, w in enumerate(WORDS)}
PIXEL_OFFSET = 4 + len(WORDS)
PIXEL_LEVELS = 17  # values 0..16
VOCAB_SIZE = PIXEL_OFFSET + PIXEL_LEVELS
MAX_CAPTION_WORDS = 8
IMAGE_TOKENS = 64
SEQUENCE_LENGTH = MAX_CAPTION_WORDS + 2 + IMAGE_TOKENS  # BOS, words, SEP, pixels
EMPTY_CAPTION = (BOS_ID, SEP_ID)  # the unconditional sequence's caption (classifier-free guidance)
CAPTION_STREAM = 3  # the random stream of phrasings and caption dropout, apart from the epoch order's


def caption(label: int, phrasing: int) -> str:
    return PHRASINGS[phrasing].format(word=NUMBER_WORDS[label], digit=label)


def caption_ids(text: str) -> list[int]:
    """BOS, the ids of the words of `text` (lower-cased), SEP. ValueError naming an unknown
    word, or a caption of more than MAX_CAPTION_WORDS words."""
    words = re.findall(r"[\w']+", text.lower())
    unknown = [w for w in words if w not in WORD_IDS]
    if unknown:
        raise ValueError(f"caption {text!r}: unknown word {unknown[0]!r} (the words known: {' '.join(WORDS)})")
    if len(words) > MAX_CAPTION_WORDS:
        raise ValueError(f"caption {text!r}: {len(words)} words, more than {MAX_CAPTION_WORDS}")
    return [BOS_ID] + [WORD_IDS[w] for w in words] + [SEP_ID]


def token_name(token: int) -> str:
    """How a token is shown (e.g. on attention pictures): a word, `<s>`, `<sep>`, or `px7`."""
    if token >= PIXEL_OFFSET:
        return f"px{token - PIXEL_OFFSET}"
    return ("<pad>", "<unk>", "<s>", "<sep>", *WORDS)[token]


def pixel_tokens(image: np.ndarray) -> np.ndarray:
    """A stored image (uint8 `[8, 8, 1]`, 0..255) → its 64 pixel tokens, row by row."""
    values = np.round(image.astype(np.float32).reshape(-1) * (PIXEL_LEVELS - 1) / 255.0)
    return (PIXEL_OFFSET + values).astype(np.int32)


def image_from_tokens(tokens: np.ndarray) -> np.ndarray:
    """64 pixel tokens → the stored image (uint8 `[8, 8, 1]`, 0..255)."""
    values = np.asarray(tokens, np.float32).reshape(8, 8, 1) - PIXEL_OFFSET
    return np.round(values * 255.0 / (PIXEL_LEVELS - 1)).astype(np.uint8)


def sequence(caption_tokens: Sequence[int], pixels: np.ndarray) -> np.ndarray:
    """The `SEQUENCE_LENGTH` tokens of a caption's ids (BOS … SEP) and 64 pixel tokens."""
    out = np.zeros(SEQUENCE_LENGTH, np.int32)
    out[MAX_CAPTION_WORDS + 2 - len(caption_tokens):MAX_CAPTION_WORDS + 2] = caption_tokens
    out[-IMAGE_TOKENS:] = pixels
    return out


def model_batch(sequences: np.ndarray, valid: np.ndarray) -> dict:
    """Sequences `[B, SEQUENCE_LENGTH]` → the model's `inputs` (all but the last token) and
    `labels` (the next token at the 64 pixel predictions, 0 elsewhere and on rows not
    `valid`)."""
    labels = np.zeros_like(sequences[:, 1:])
    labels[:, -IMAGE_TOKENS:] = sequences[:, -IMAGE_TOKENS:]
    labels[~valid] = 0
    return {"inputs": sequences[:, :-1], "labels": labels}


class CaptionedDigits:
    """The digits builder's splits as captioned sequences.

    Training batches (`train_batches`): every training image at most once per epoch (the
    order drawn from (seed, epoch), the remainder dropped), each with a phrasing drawn from (seed, step) and, with
    probability `caption_dropout`, the empty caption instead. Evaluation batches: every
    image of a split once, in order, with phrasing `index % len(PHRASINGS)`.
    """

    def __init__(self, sources: Mapping[str, Sequence], caption_dropout: float):
        self.caption_dropout = caption_dropout
        self._images, self._labels = {}, {}
        for split, source in sources.items():
            records = [source[i] for i in range(len(source))]
            self._images[split] = np.stack([pixel_tokens(r["image"]) for r in records])
            self._labels[split] = np.array([r["label"] for r in records], np.int64)

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(pixel tokens `[N, 64]`, labels `[N]`) of a split, in order."""
        return self._images[split], self._labels[split]

    def train_batches(self, *, seed: int, batch_size: int, batch_multiple: int) -> grain.MapDataset:
        pixels, labels = self.images("train")
        rows = sharding.padded_rows(batch_size, batch_multiple)

        def batch(step: int) -> dict:
            epoch, index = divmod(step, len(labels) // rows)
            ids = epoch_order(len(labels), seed, epoch)[index * rows:(index + 1) * rows]
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CAPTION_STREAM, step)))
            phrasing = rng.integers(len(PHRASINGS), size=rows)
            dropped = rng.random(rows) < self.caption_dropout
            sequences = np.stack([
                sequence(EMPTY_CAPTION if drop else caption_ids(caption(labels[i], p)), pixels[i])
                for i, p, drop in zip(ids, phrasing, dropped)])
            return {k: sharding.process_rows(v) for k, v in model_batch(sequences, np.ones(rows, bool)).items()}

        return grain.MapDataset.range(sys.maxsize).map(batch)

    def eval_batches(self, split: str, *, batch_size: int, batch_multiple: int) -> grain.MapDataset:
        pixels, labels = self.images(split)
        rows = sharding.padded_rows(batch_size, batch_multiple)

        def batch(start: int) -> dict:
            ids = np.arange(start, start + rows)
            valid = ids < len(labels)
            ids = np.minimum(ids, len(labels) - 1)
            sequences = np.stack([sequence(caption_ids(caption(labels[i], i % len(PHRASINGS))), pixels[i])
                                  for i in ids])
            return {k: sharding.process_rows(v) for k, v in model_batch(sequences, valid).items()}

        return grain.MapDataset.range(0, len(labels), rows).map(batch)


def captioned_digits(data_dir: str | None, caption_dropout: float) -> CaptionedDigits:
    builder = digits.prepare(data_dir)
    return CaptionedDigits({split: builder.as_data_source(split=split) for split in digits.SPLITS}, caption_dropout)
