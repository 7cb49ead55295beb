"""Text classification datasets: Bible testament labels and splits, the cached tokenizer,
deterministic training batches, evaluation batches, IMDB through TFDS mock data."""

import collections
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import assert_process_shares_make_the_batch

from ml_transformer.data import bible, pipeline, texts, tokenizer

MAX_LEN = 48


def data_config(data_dir, **overrides):
    data = dict(name="bible_testament", data_dir=str(data_dir), vocab_size=300, max_len=MAX_LEN, batch_tokens=0)
    return ml_collections.ConfigDict({"data": {**data, **overrides}})


@pytest.fixture(scope="module")
def data_dir(tfds_dir):
    return tfds_dir


@pytest.fixture(scope="module")
def verses(data_dir, tmp_path_factory):
    return texts.bible_testament(data_config(data_dir), str(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def records(data_dir):
    """The Bible builder's records of each split, in order."""
    builder = bible.prepare("en-fr", str(data_dir))
    return {split: list(builder.as_data_source(split=split)) for split in texts.SPLITS}


def test_testament_labels_follow_the_book_numbers(verses, records, data_dir):
    assert verses.label_names == ["old", "new"] and verses.num_classes == 2
    for split in texts.SPLITS:
        books = np.array([r["book"] for r in records[split]])
        labels = verses.encoded(split)[2]
        np.testing.assert_array_equal(labels, (books >= 40).astype(np.int32))
        assert 0 < labels.mean() < 0.5
    validation, labels = texts.bible_testament_reader(bible.prepare("en-fr", str(data_dir)))("validation")
    assert labels[validation.index("Jesus wept.")] == 1  # John 11:35
    eve = next(i for i, t in enumerate(validation) if t.startswith("The man knew Eve his wife."))
    assert labels[eve] == 0  # Genesis 4:1


def test_splits_are_translations_splits_disjoint_by_chapter(records, data_dir):
    """Translation reads the same builder's splits (`pipeline.read_texts`): same verses, same order."""
    read = texts.bible_testament_reader(bible.prepare("en-fr", str(data_dir)))
    chapters = {}
    for split in texts.SPLITS:
        assert read(split)[0] == [pipeline.decode_text(r["source"]) for r in records[split]]
        chapters[split] = {(int(r["book"]), int(r["chapter"])) for r in records[split]}
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["train"] & chapters["test"]
    assert not chapters["validation"] & chapters["test"]
    with pytest.raises(ValueError, match="'dev'"):
        read("dev")


def test_encode_truncates_pads_and_has_no_eos(verses):
    short, long = "Jesus wept.", " ".join(["In the beginning God created the heavens and the earth."] * 5)
    ids = verses.encode([short, long, ""])
    assert ids.shape == (3, MAX_LEN) and ids.dtype == np.int32
    pieces = verses.tokenizer.encode(short)[:-1]
    np.testing.assert_array_equal(ids[0, : len(pieces)], pieces)
    assert not ids[0, len(pieces):].any()
    assert (ids[1] > 3).all()  # Truncated: no padding, no EOS.
    assert not ids[2].any()
    assert verses.input_spec == ((MAX_LEN,), np.int32)


def test_tokenizer_is_cached_and_copied_to_the_workdir(data_dir, verses, tmp_path):
    cached = os.path.join(bible.prepare("en-fr", str(data_dir)).data_dir, "spm-source-300.model")
    mtime = os.path.getmtime(cached)
    again = texts.bible_testament(data_config(data_dir), str(tmp_path))
    assert os.path.getmtime(cached) == mtime
    with open(cached, "rb") as a, open(tmp_path / tokenizer.TOKENIZER_FILE, "rb") as b:
        assert a.read() == b.read()
    np.testing.assert_array_equal(again.encode(["Jesus wept."]), verses.encode(["Jesus wept."]))
    with pytest.raises(ValueError, match="tokenizer.model.*vocab_size=400"):
        texts.bible_testament(data_config(data_dir, vocab_size=400), str(tmp_path))


def _examples(ids, lengths, labels):
    """The multiset of (token ids, label) pairs."""
    return collections.Counter((row[:n].tobytes(), int(y)) for row, n, y in zip(ids, lengths, labels))


def test_train_batches_are_a_function_of_seed_and_step(verses):
    ids, lengths, labels = verses.encoded("train")
    batches = verses.train_batches(seed=3, batch_size=64, batch_multiple=2)
    again = verses.train_batches(seed=3, batch_size=64, batch_multiple=2)[5:]
    for key in ("inputs", "labels", "valid"):
        np.testing.assert_array_equal(batches[7][key], again[2][key])
    assert not np.array_equal(batches[7]["inputs"], batches[8]["inputs"])
    other_seed = verses.train_batches(seed=4, batch_size=64, batch_multiple=2)
    assert not np.array_equal(batches[7]["inputs"], other_seed[7]["inputs"])

    epoch = [batches[step] for step in range(-(-len(ids) // 64))]  # One epoch.
    assert all(b["inputs"].shape == (64, MAX_LEN) and b["labels"].dtype == np.int32 for b in epoch)
    valid = np.concatenate([b["valid"] for b in epoch])
    inputs = np.concatenate([b["inputs"] for b in epoch])[valid]
    assert valid.sum() == len(ids) and inputs[:, 0].min() > 0
    seen = _examples(inputs, (inputs > 0).sum(1), np.concatenate([b["labels"] for b in epoch])[valid])
    assert seen == _examples(ids, lengths, labels)
    next_epoch = batches[len(epoch)]["inputs"]
    assert not any(np.array_equal(next_epoch, b["inputs"]) for b in epoch[:3])


def test_bucketed_train_batches(data_dir, verses, tmp_path):
    bucketed = texts.bible_testament(data_config(data_dir, batch_tokens=512), str(tmp_path))
    batches = bucketed.train_batches(seed=0, batch_size=64, batch_multiple=4)
    shapes = {batches[step]["inputs"].shape for step in range(40)}
    lengths = {length for _, length in shapes}
    assert len(lengths) > 1 and lengths <= {16, 32, 48}
    assert all(rows % 4 == 0 and rows * length <= 512 for rows, length in shapes)


def test_eval_batches_cover_each_example_once_in_order(verses):
    ids, _, labels = verses.encoded("validation")
    batches = list(verses.eval_batches("validation", batch_size=100, batch_multiple=8))
    assert all(b["inputs"].shape == (104, MAX_LEN) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == len(ids) and valid[: len(ids)].all()
    np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches])[: len(ids)], ids)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[: len(ids)], labels)
    assert not batches[-1]["inputs"][~batches[-1]["valid"]].any()


def test_each_process_reads_its_share_of_every_batch(verses):
    train = verses.train_batches(seed=0, batch_size=64, batch_multiple=4)
    evaluated = verses.eval_batches("validation", batch_size=100, batch_multiple=4)
    for step in (0, 30):
        assert_process_shares_make_the_batch(lambda: train[step])
    assert_process_shares_make_the_batch(lambda: evaluated[len(evaluated) - 1])


def test_imdb_reviews_through_mock_data(tmp_path):
    config = data_config(tmp_path / "tfds", name="imdb_reviews", vocab_size=40, max_len=16)
    with tfds.testing.mock_data(num_examples=20):
        raw = [r["text"] for r in tfds.data_source("imdb_reviews", split="train", data_dir=str(tmp_path))]
        reviews = texts.imdb_reviews(config, str(tmp_path / "run"))
        batch = reviews.train_batches(seed=0, batch_size=8, batch_multiple=1)[0]
        splits = {split: reviews.encoded(split) for split in texts.SPLITS}
        evaluated = list(reviews.eval_batches("test", batch_size=8, batch_multiple=4))
    assert all(isinstance(t, str) for t in raw)
    assert reviews.label_names == ["neg", "pos"] and reviews.num_classes == 2
    assert {s: len(ids) for s, (ids, _, _) in splits.items()} == {"train": 18, "validation": 2, "test": 20}
    np.testing.assert_array_equal(np.concatenate([splits["train"][0], splits["validation"][0]]),
                                  reviews.encode(raw))
    assert batch["inputs"].shape == (8, 16) and set(batch["labels"]) <= {0, 1} and batch["valid"].all()
    assert sum(int(b["valid"].sum()) for b in evaluated) == 20 and len(evaluated) == 3
    assert os.path.exists(tmp_path / "tfds" / "imdb_reviews" / "spm-40.model")
    np.testing.assert_array_equal(reviews.encode(["a<br />b"]), reviews.encode(["a b"]))
