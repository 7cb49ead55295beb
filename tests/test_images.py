"""Image data: the digits builder and its split, augmentation, train and eval batches,
files for predict mode, and the catalog loaders on TFDS mock data."""

import collections
import functools

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import assert_process_shares_make_the_batch

from ml_transformer.data import digits, images

NUM_DIGITS = 1797


def data_config(name, **fields):
    base = dict(name=name, data_dir="", crop_padding=0, flip=False, mixup_alpha=0.0)
    return ml_collections.ConfigDict({"data": {**base, **fields}})


def indexed_source(n, size=6):
    """Records whose image holds the example's index (in every pixel) and label index % 10."""
    return [{"image": np.full((size, size, 1), i, np.uint8), "label": i % 10} for i in range(n)]


def indices(batch):
    """The example index of each row of a batch of `indexed_source` images (no augmentation)."""
    return np.rint((batch["inputs"][:, 0, 0, 0] + 1.0) * 127.5).astype(int)


def indexed_data(n, mixup_alpha=0.0, padding=0, flip=False):
    """Data over `indexed_source` splits, without augmentation unless asked."""
    sources = {split: indexed_source(n) for split in ("train", "validation", "test")}
    augmentation = functools.partial(images.crop_flip, padding=padding, flip=flip)
    return images.ImageData(sources, [str(d) for d in range(10)], (6, 6, 1), augmentation,
                            mixup_alpha=mixup_alpha, in_memory=True)


def generators(count):
    return [np.random.default_rng(i) for i in range(count)]


# --- digits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    return images.digits(data_config("digits", data_dir=str(tmp_path_factory.mktemp("tfds"))), workdir=None)


def test_digits_split_is_stratified_disjoint_complete_and_fixed(digits_data):
    _, labels = digits.load()
    assert len(labels) == NUM_DIGITS
    seen = {}
    for split in digits.SPLITS:
        source = digits_data.sources[split]
        seen[split] = [int(source[i]["index"]) for i in range(len(source))]
        assert seen[split] == sorted(seen[split])
        counts = collections.Counter(int(source[i]["label"]) for i in range(len(source)))
        for label, total in collections.Counter(labels.tolist()).items():
            share = {"train": 0.70, "validation": 0.15, "test": 0.15}[split] * total
            assert abs(counts[label] - share) <= 1, (split, label, counts[label], share)
    assert sum(map(len, seen.values())) == NUM_DIGITS
    assert sorted(sum(seen.values(), [])) == list(range(NUM_DIGITS))  # disjoint and complete
    assignment = digits.split_assignment(labels)
    np.testing.assert_array_equal(assignment, digits.split_assignment(labels))
    for split, members in seen.items():
        assert (assignment[members] == split).all()
    image = digits_data.sources["test"][0]["image"]
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8
    source_images, _ = digits.load()
    np.testing.assert_array_equal(image, source_images[seen["test"][0]])
    assert source_images.max() == 255 and source_images.min() == 0


def test_digits_train_batches_depend_only_on_seed_and_step(digits_data):
    batches = digits_data.train_batches(seed=1, batch_size=32)
    again = images.ImageData(digits_data.sources, digits_data.label_names, (8, 8, 1), digits_data.train_images,
                             in_memory=True).train_batches(seed=1, batch_size=32)
    first = batches[5]
    assert first["inputs"].shape == (32, 8, 8, 1) and first["inputs"].dtype == np.float32
    assert first["labels"].shape == (32,) and first["labels"].dtype == np.int32
    assert -1.0 <= first["inputs"].min() and first["inputs"].max() <= 1.0
    np.testing.assert_array_equal(first["inputs"], again[5]["inputs"])
    np.testing.assert_array_equal(first["inputs"], batches[5:][0]["inputs"])  # a resumed run
    assert not np.array_equal(first["inputs"], batches[6]["inputs"])
    assert not np.array_equal(first["inputs"], digits_data.train_batches(seed=2, batch_size=32)[5]["inputs"])


def test_digits_eval_batches_cover_each_example_once(digits_data):
    batches = list(digits_data.eval_batches("test", batch_size=64, batch_multiple=2))
    assert all(b["inputs"].shape == (64, 8, 8, 1) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 270 and valid[:270].all()
    labels = np.concatenate([b["labels"] for b in batches])[valid]
    source = digits_data.sources["test"]
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        digits_data.eval_batches("dev", batch_size=64)


# --- batches over an indexed toy source --------------------------------------------------


def test_each_process_reads_its_share_of_every_batch_augmented_and_mixed_alike():
    data = indexed_data(50, mixup_alpha=0.4, padding=1, flip=True)
    train = data.train_batches(seed=0, batch_size=8, batch_multiple=4)
    evaluated = data.eval_batches("test", batch_size=12, batch_multiple=4)
    assert_process_shares_make_the_batch(lambda: train[7])
    assert_process_shares_make_the_batch(lambda: evaluated[len(evaluated) - 1])


def test_each_epoch_holds_each_example_at_most_once_in_a_new_order():
    batches = indexed_data(10).train_batches(seed=0, batch_size=4)
    epochs = [np.concatenate([indices(batches[e * 2 + i]) for i in range(2)]) for e in range(3)]
    for epoch in epochs:
        assert len(set(epoch)) == 8 and set(epoch) <= set(range(10))
    assert len({tuple(e) for e in epochs}) == 3
    for e in range(3):
        np.testing.assert_array_equal(batches[e * 2]["labels"], indices(batches[e * 2]) % 10)
    with pytest.raises(ValueError, match="batch_size=12 exceeds the 10 training examples"):
        indexed_data(10).train_batches(seed=0, batch_size=12)
    with pytest.raises(ValueError, match="batch_multiple"):
        indexed_data(10).train_batches(seed=0, batch_size=3, batch_multiple=2)


def test_eval_batches_pad_to_full_batches_in_order():
    batches = list(indexed_data(10).eval_batches("validation", batch_size=4, batch_multiple=2))
    assert [b["valid"].sum() for b in batches] == [4, 4, 2]
    assert all(len(b["valid"]) == 4 for b in batches)
    rows = np.concatenate([indices(b)[b["valid"]] for b in batches])
    np.testing.assert_array_equal(rows, np.arange(10))
    last = batches[-1]
    assert (last["inputs"][~last["valid"]] == 0).all() and last["labels"].dtype == np.int32


def test_mixup_mixes_each_image_with_the_reversed_batch_and_the_labels_alike():
    plain = indexed_data(40).train_batches(seed=0, batch_size=8)[3]
    mixed = indexed_data(40, mixup_alpha=0.4).train_batches(seed=0, batch_size=8)[3]
    x, m = plain["inputs"][:, 0, 0, 0], mixed["inputs"][:, 0, 0, 0]
    lam = (m[0] - x[-1]) / (x[0] - x[-1])
    assert 0 < lam < 1
    np.testing.assert_allclose(mixed["inputs"], lam * plain["inputs"] + (1 - lam) * plain["inputs"][::-1], atol=1e-5)
    labels, one_hot = mixed["labels"], np.eye(10)[plain["labels"]]
    assert labels.shape == (8, 10) and labels.dtype == np.float32
    np.testing.assert_allclose(labels, lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-5)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)


# --- augmentation ------------------------------------------------------------------------


def test_crop_with_padding_shifts_each_image_by_at_most_the_padding():
    rng = np.random.default_rng(0)
    batch = np.zeros((64, 8, 8, 1), np.uint8)
    batch[:, 1:-1, 1:-1] = rng.integers(1, 256, size=(64, 6, 6, 1))  # a zero border of one pixel
    out = images.crop_flip(batch, generators(64), padding=1, flip=False)
    assert out.shape == batch.shape and out.dtype == np.uint8
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    used = set()
    for original, shifted in zip(batch, out):
        matches = [s for s in shifts if np.array_equal(np.roll(original, s, axis=(0, 1)), shifted)]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == set(shifts)


def test_flip_mirrors_about_half_the_images():
    batch = np.random.default_rng(0).integers(0, 256, size=(200, 4, 4, 3), dtype=np.uint8)
    out = images.crop_flip(batch, generators(200), padding=0, flip=True)
    mirrored = np.array([np.array_equal(o, b[:, ::-1]) for o, b in zip(out, batch)])
    kept = np.array([np.array_equal(o, b) for o, b in zip(out, batch)])
    assert (mirrored ^ kept).all() and 60 < mirrored.sum() < 140


def test_imagenet_crops_have_the_model_size():
    rng = np.random.default_rng(0)
    for shape in [(37, 50, 3), (64, 23, 3), (16, 16, 3)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        for out in (images.inception_crop(image, rng, size=24, min_area=0.08, flip=True),
                    images.resize_center_crop(image, size=24)):
            assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    flat = np.full((40, 30, 3), 77, np.uint8)
    assert (images.inception_crop(flat, rng, size=24, min_area=0.08, flip=True) == 77).all()
    assert (images.resize_center_crop(flat, size=24) == 77).all()


# --- predict-mode inputs -----------------------------------------------------------------


def test_encode_reads_npy_and_png_files(digits_data, tmp_path):
    image = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.save(tmp_path / "a.npy", image)
    Image.fromarray(image).save(tmp_path / "b.png")
    inputs = digits_data.encode([str(tmp_path / "a.npy"), str(tmp_path / "b.png")])
    assert inputs.shape == (2, 8, 8, 1) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[0, ..., 0], image / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(inputs[0], inputs[1])
    np.save(tmp_path / "big.npy", np.zeros((9, 8), np.uint8))
    with pytest.raises(ValueError, match=r"big.npy: image of shape \[9, 8, 1\]"):
        digits_data.encode([str(tmp_path / "big.npy")])
    with pytest.raises(ValueError, match="missing.png: no such image file"):
        digits_data.encode([str(tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        digits_data.encode([str(tmp_path / "bad.png")])


# --- catalog datasets on mock data -------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_catalog_loaders_end_to_end_on_mock_data(name, shape):
    config = data_config(name, crop_padding=2, flip=name == "cifar10", mixup_alpha=0.2)
    with tfds.testing.mock_data(num_examples=12):
        data = getattr(images, name)(config, workdir=None)
        batch = data.train_batches(seed=0, batch_size=8)[1]
        evaluated = list(data.eval_batches("test", batch_size=8))
    assert data.num_classes == 10 and data.input_spec == (shape, np.float32)
    assert batch["inputs"].shape == (8, *shape) and batch["labels"].shape == (8, 10)
    assert [b["valid"].sum() for b in evaluated] == [8, 4]
    assert all(b["inputs"].shape == (8, *shape) for b in evaluated)


def test_imagenet_loader_on_mock_data():
    config = data_config("imagenet2012", image_size=32, crop_min_area=0.08, flip=True)
    with tfds.testing.mock_data(num_examples=6):
        data = images.imagenet2012(config, workdir=None)
        batch = data.train_batches(seed=0, batch_size=4)[0]
        evaluated = list(data.eval_batches("validation", batch_size=4))
    assert data.num_classes == 1000 and data.label_names[0] == "n01440764"
    assert batch["inputs"].shape == (4, 32, 32, 3) and batch["labels"].shape == (4,)
    assert [b["valid"].sum() for b in evaluated] == [4, 2]


def test_unprepared_catalog_data_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"cifar10.*tfds build cifar10 --file_format=array_record"):
        images.cifar10(data_config("cifar10", data_dir=str(tmp_path)), workdir=None)
