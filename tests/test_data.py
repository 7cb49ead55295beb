"""Tests of the data layer: Bible builder, SentencePiece tokenizer, grain pipelines."""

import collections
import os
import re

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import assert_process_shares_make_the_batch, experiment_config

from ml_transformer import sharding
from ml_transformer.data import bible, pipeline, tokenizer
from ml_transformer.tasks.translation import TranslationTask

TOTAL_VERSES = 31_102


def _has_letter_or_digit(text):
    return re.search(r'[^\W_]', text) is not None


@pytest.fixture(scope='module')
def data_dir(tfds_dir):
    return str(tfds_dir)


@pytest.fixture(scope='module')
def en_fr(data_dir):
    return bible.prepare('en-fr', data_dir)


@pytest.fixture(scope='module')
def en_fr_validation(en_fr):
    return en_fr.as_data_source(split='validation')


@pytest.fixture(scope='module')
def validation_texts(en_fr_validation):
    return pipeline.read_texts(en_fr_validation)


@pytest.fixture(scope='module')
def tok(tmp_path_factory, validation_texts):
    path = tmp_path_factory.mktemp('spm') / 'en-fr.model'
    return tokenizer.train_tokenizer(validation_texts[0] + validation_texts[1], str(path), 500)


# --- bible.py -----------------------------------------------------------------------------


def test_chapter_split_is_about_90_5_5_of_chapters():
    chapters = {(b, c) for b, c, *_ in bible.read_pairs('4', 'l')}
    assert len(chapters) == 1189
    counts = collections.Counter(bible.chapter_split(b, c) for b, c in chapters)
    assert set(counts) == set(bible.SPLITS)
    assert abs(counts['train'] / len(chapters) - 0.90) < 0.02
    assert abs(counts['validation'] / len(chapters) - 0.05) < 0.015
    assert abs(counts['test'] / len(chapters) - 0.05) < 0.015
    assert bible.chapter_split(43, 11) == bible.chapter_split(43, 11)


def test_en_fr_split_sizes_cover_every_verse(en_fr):
    skipped = en_fr.info.metadata['skipped']
    sizes = {split: info.num_examples for split, info in en_fr.info.splits.items()}
    assert set(sizes) == set(bible.SPLITS) == set(skipped)
    assert sum(sizes.values()) == TOTAL_VERSES - sum(skipped.values())
    assert 0.88 < sizes['train'] / TOTAL_VERSES < 0.92


def test_examples_match_the_database_and_their_chapter_split(en_fr, data_dir):
    verses = {(b, c, v): (s, t) for b, c, v, s, t in bible.read_pairs('4', 'l')}
    for split, source in bible.load_splits('en-fr', data_dir).items():
        indices = range(len(source)) if split != 'train' else range(0, len(source), 97)
        for i in indices:
            ex = source[i]
            key = (int(ex['book']), int(ex['chapter']), int(ex['verse']))
            assert bible.chapter_split(key[0], key[1]) == split
            texts = pipeline.decode_text(ex['source']), pipeline.decode_text(ex['target'])
            assert texts == verses[key]


def test_known_verse_text(en_fr_validation):
    examples = [en_fr_validation[i] for i in range(len(en_fr_validation))]
    found = [ex for ex in examples if (ex['book'], ex['chapter'], ex['verse']) == (43, 11, 35)]
    assert len(found) == 1
    assert found[0]['source'] == b'Jesus wept.'
    assert pipeline.decode_text(found[0]['target']) == 'Jésus pleura.'


def test_inline_verse_references_are_removed(en_fr):
    assert bible.clean_verse('(89:49) Y a-t-il un homme?') == 'Y a-t-il un homme?'
    assert bible.clean_verse('en paix. (21:1) Jonathan dit:') == 'en paix. Jonathan dit:'
    assert bible.clean_verse(' Pause (Sélah). ') == 'Pause (Sélah).'
    train = en_fr.as_data_source('train')
    targets = [pipeline.decode_text(train[i]['target']) for i in range(0, len(train), 5)]
    assert not any(re.search(r'\(\d+:\d+\)', t) for t in targets)  # 1 in 20 had one


def test_en_ko_skips_empty_verses(data_dir):
    builder = bible.prepare('en-ko', data_dir)
    skipped = builder.info.metadata['skipped']
    empty = sum(not (_has_letter_or_digit(s) and _has_letter_or_digit(t))
                for *_, s, t in bible.read_pairs('4', 'n'))
    assert sum(skipped.values()) == empty > 0
    sizes = [info.num_examples for info in builder.info.splits.values()]
    assert sum(sizes) == TOTAL_VERSES - empty
    test = builder.as_data_source(split='test')
    assert all(_has_letter_or_digit(t) for t in pipeline.read_texts(test)[1])
    # The counts survive a reload from disk.
    reloaded = bible.BibleParallel(config='en-ko', data_dir=data_dir)
    assert reloaded.info.metadata['skipped'] == skipped


def test_unknown_pair_raises():
    with pytest.raises(ValueError, match=r"'en-xx'.*en-fr, en-de, en-ko"):
        bible.load_splits('en-xx')


def test_mock_data_gives_text_as_str(tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        sources = bible.load_splits('en-de', str(tmp_path))
        assert {split: len(s) for split, s in sources.items()} == dict.fromkeys(bible.SPLITS, 7)
        texts = pipeline.read_texts(sources['train'])
    assert all(isinstance(t, str) and t for side in texts for t in side)


# --- tokenizer.py -------------------------------------------------------------------------


def test_decode_text_accepts_bytes_and_str():
    assert pipeline.decode_text('Jésus'.encode()) == pipeline.decode_text('Jésus') == 'Jésus'


def test_tokenizer_round_trip_and_special_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 500
    for text in ['In the beginning God created the heavens and the earth.',
                 "Car Dieu a tant aimé le monde qu'il a donné son Fils."]:
        ids = tok.encode(text)
        assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
        assert tok.pad_id not in ids and tok.bos_id not in ids
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id] + ids + [7, 8, tok.pad_id]) == text
    assert tok.encode_batch(['a b', 'God']) == [tok.encode('a b'), tok.encode('God')]


def test_korean_round_trip(tmp_path, data_dir):
    korean = pipeline.read_texts(bible.prepare('en-ko', data_dir).as_data_source(split='test'))[1]
    tok = tokenizer.train_tokenizer(korean, str(tmp_path / 'ko.model'), 1500)
    text = '하나님이 세상을 이처럼 사랑하사 독생자를 주셨으니'
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id not in tok.encode(text)


def test_training_is_deterministic_and_atomic(tmp_path, validation_texts):
    texts = validation_texts[0][:800] + validation_texts[1][:800]
    for name in 'ab':
        tokenizer.train_tokenizer(iter(texts), str(tmp_path / f'{name}.model'), 300)
    assert (tmp_path / 'a.model').read_bytes() == (tmp_path / 'b.model').read_bytes()
    assert sorted(os.listdir(tmp_path)) == ['a.model', 'b.model']
    a, b = (tokenizer.load_tokenizer(str(tmp_path / f'{name}.model')) for name in 'ab')
    assert a.encode(texts[0]) == b.encode(texts[0])


def test_bad_or_missing_model_names_the_file(tmp_path):
    missing = str(tmp_path / 'missing.model')
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        tokenizer.load_tokenizer(missing)
    bad = tmp_path / 'bad.model'
    bad.write_bytes(b'not a model')
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        tokenizer.load_tokenizer(str(bad))


# --- pipeline.py: training batches --------------------------------------------------------


def _synthetic(n=3000, max_len=150, seed=0):
    """Pairs whose first token is the example id + 4, so rows can be traced back."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for i in range(n):
        for out in (inputs, targets):
            length = int(rng.integers(2, max_len))
            seq = rng.integers(4, 100, length).astype(np.int32)
            seq[0], seq[-1] = i + 4, 3
            out.append(seq)
    return inputs, targets


def _epoch(ds, epoch):
    steps = range(epoch * ds.batches_per_epoch, (epoch + 1) * ds.batches_per_epoch)
    return [ds[step] for step in steps]


def _check_rows(batch, inputs, targets):
    """Example ids of the non-empty rows; checks rows hold their example and zeros."""
    ids = []
    for row_in, row_tgt in zip(batch['inputs'], batch['targets']):
        if not row_in.any():
            assert not row_tgt.any()
            continue
        i = int(row_in[0]) - 4
        for row, seq in ((row_in, inputs[i]), (row_tgt, targets[i])):
            np.testing.assert_array_equal(row[:len(seq)], seq)
            assert not row[len(seq):].any()
        ids.append(i)
    return ids


def test_bucketed_batches_shapes_and_coverage():
    inputs, targets = _synthetic()
    longest = np.maximum([len(s) for s in inputs], [len(s) for s in targets])
    max_len, batch_tokens, multiple = 96, 2048, 4
    ds = pipeline.TrainBatches(inputs, targets, seed=1, max_len=max_len,
                               batch_tokens=batch_tokens, batch_multiple=multiple)
    assert isinstance(ds, grain.MapDataset)
    assert ds.num_dropped == int((longest > max_len).sum()) > 0
    assert list(ds.batch_sizes) == [16, 32, 48, 64, 80, 96]
    for epoch in range(2):
        seen = []
        for batch in _epoch(ds, epoch):
            rows, length = batch['inputs'].shape
            assert batch['targets'].shape == (rows, length)
            assert batch['inputs'].dtype == batch['targets'].dtype == np.int32
            assert rows % multiple == 0 and rows == ds.batch_sizes[length]
            assert rows * length <= batch_tokens
            ids = _check_rows(batch, inputs, targets)
            assert all(length - 16 < longest[i] <= length for i in ids)  # Smallest bucket.
            seen += ids
        assert sorted(seen) == np.flatnonzero(longest <= max_len).tolist()


def test_batches_resume_exactly_and_epochs_differ():
    inputs, targets = _synthetic(n=800)
    make = lambda seed: pipeline.TrainBatches(inputs, targets, seed=seed, max_len=160,
                                              batch_tokens=1024, batch_multiple=2)
    ds = make(7)
    n = ds.batches_per_epoch
    for step in (3 * n + 5, 0, n - 1, n, 2):  # A fresh dataset, read out of order.
        again = make(7)[step]
        for key in ('inputs', 'targets'):
            np.testing.assert_array_equal(again[key], ds[step][key])
    first_ids = lambda batches: [b['inputs'][:, 0].tolist() for b in batches]
    assert first_ids(_epoch(ds, 0)) != first_ids(_epoch(ds, 1))
    assert first_ids(_epoch(ds, 0)) != first_ids(_epoch(make(8), 0))
    # Grain iteration from a resumed step reads the same batches.
    resumed = iter(ds[n - 1:].to_iter_dataset(grain.ReadOptions(num_threads=2)))
    for step in range(n - 1, n + 3):
        np.testing.assert_array_equal(next(resumed)['targets'], ds[step]['targets'])


def test_fixed_batch_size_mode():
    inputs, targets = _synthetic(n=500)
    longest = np.maximum([len(s) for s in inputs], [len(s) for s in targets])
    ds = pipeline.TrainBatches(inputs, targets, seed=0, max_len=128, batch_size=24,
                               batch_multiple=8)
    assert ds.batch_sizes == {128: 24}
    seen = []
    for batch in _epoch(ds, 0):
        assert batch['inputs'].shape == batch['targets'].shape == (24, 128)
        seen += _check_rows(batch, inputs, targets)
    assert sorted(seen) == np.flatnonzero(longest <= 128).tolist()


def test_batch_settings_are_checked():
    inputs, targets = _synthetic(n=10)
    with pytest.raises(ValueError, match='multiple of batch_multiple'):
        pipeline.TrainBatches(inputs, targets, seed=0, max_len=64, batch_size=10, batch_multiple=4)
    with pytest.raises(ValueError, match='exactly one'):
        pipeline.TrainBatches(inputs, targets, seed=0, max_len=64, batch_size=8, batch_tokens=512)
    with pytest.raises(ValueError, match='bucket_boundaries'):
        pipeline.TrainBatches(inputs, targets, seed=0, max_len=64, batch_tokens=512,
                              bucket_boundaries=[32, 16])
    with pytest.raises(ValueError, match='max_len=1 '):
        pipeline.TrainBatches(inputs, targets, seed=0, max_len=1, batch_tokens=512)


def test_real_split_batches(tok, en_fr_validation):
    inputs, targets = pipeline.encode_split(en_fr_validation, tok)
    assert len(inputs) == len(targets) == len(en_fr_validation)
    assert all(s[-1] == tok.eos_id for s in inputs + targets)
    ds = pipeline.TrainBatches(inputs, targets, seed=0, max_len=64, batch_tokens=1024,
                               batch_multiple=2, bucket_boundaries=[24, 40])
    assert list(ds.batch_sizes.items()) == [(24, 42), (40, 24), (64, 16)]
    kept = sum(max(len(s), len(t)) <= 64 for s, t in zip(inputs, targets))
    assert kept + ds.num_dropped == len(inputs)
    rows = sum(int((b['targets'] > 0).any(axis=1).sum()) for b in _epoch(ds, 0))
    assert rows == kept


def test_translation_batches_are_padded_to_the_configured_length_multiple(trained):
    workdir, data_dir, _ = trained
    config = experiment_config('translate_bible', 'smoke')
    config.data.data_dir, config.data.max_len, config.data.length_multiple = str(data_dir), 32, 8
    task = TranslationTask(config, str(workdir), sharding.make_mesh(devices=jax.devices()[:1]))
    assert task.train_batches().batch_sizes == {8: 64, 16: 32, 24: 21, 32: 16}  # 512 tokens per side


# --- pipeline.py: evaluation batches ------------------------------------------------------


def test_eval_batches_cover_every_example_once():
    inputs, targets = _synthetic(n=203, max_len=70)
    batches = list(pipeline.eval_batches(inputs, targets, batch_size=24, batch_multiple=8))
    assert len(batches) == 9
    seen = []
    for batch in batches:
        rows, length = batch['inputs'].shape
        assert rows == 24 and length % pipeline.EVAL_LENGTH_MULTIPLE == 0
        assert batch['targets'].shape == (rows, length)
        valid, index = batch['valid'], batch['index']
        assert np.array_equal(valid, index >= 0)
        assert not batch['inputs'][~valid].any() and not batch['targets'][~valid].any()
        assert _check_rows(batch, inputs, targets) == index[valid].tolist()
        seen += index[valid].tolist()
    assert batches[-1]['valid'].tolist() == [True] * 11 + [False] * 13  # the rows of every batch
    longest = np.maximum([len(s) for s in inputs], [len(s) for s in targets])
    assert seen == np.argsort(-longest, kind='stable').tolist()  # Longest first.


def test_each_process_reads_its_share_of_every_batch():
    inputs, targets = _synthetic(n=300)
    train = pipeline.TrainBatches(inputs, targets, seed=0, max_len=96, batch_tokens=1024, batch_multiple=4)
    for step in (0, 1, train.batches_per_epoch + 2):
        assert_process_shares_make_the_batch(lambda: train[step])
    for batch in range(3):
        evaluated = pipeline.eval_batches(inputs, targets, batch_size=40, batch_multiple=4)
        assert_process_shares_make_the_batch(lambda: evaluated[batch])
