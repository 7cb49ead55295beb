"""Image classification data: the embedded digits and the TFDS catalog's MNIST, CIFAR-10
and ImageNet, read as ArrayRecord data sources (no TensorFlow) into grain batches.

Splits. `digits` has its own stratified split (`data/digits.py`). Catalog datasets hold
out the end of their training split for validation: `CATALOG_SPLITS` (MNIST and
CIFAR-10: the last 10% of train; ImageNet: the last 1%, and its catalog 'validation'
split serves as our 'test').

Images are uint8 as stored (catalog PNG/JPEG decoded by TFDS with PIL) and reach the
model as float32 in [-1, 1] (`x / 127.5 - 1`).

Training augmentation (`config.data`), per example unless said:
  crop_padding   fixed-size datasets: pad with `crop_padding` zero pixels on each side,
                 crop back to the original size at a random offset (digits: 1, i.e.
                 translations of ±1 pixel)
  crop_min_area  ImageNet: random-resized ("inception") crop of `crop_min_area`..100%
                 of the image area, aspect ratio 3/4..4/3, resized bilinearly to
                 `image_size`
  flip           random horizontal flip
  mixup_alpha    mixup over the batch (0 = off): λ ~ Beta(α, α) per batch, each image
                 mixed with the (global) batch's reverse; labels become soft, float32 [B, C]
Evaluation: fixed-size images as they are; ImageNet resized (bilinear) so that the
shorter side is `image_size / 0.875`, then center-cropped to `image_size`.
There is no RandAugment.

The training batch of step s depends only on (seed, s): each epoch's order is a
permutation drawn from `SeedSequence(seed, spawn_key=(0, epoch))`; the generator of
`SeedSequence(seed, spawn_key=(1, s))` draws a seed for each row of the batch (its
example's augmentation draws) and then mixup's λ. A resumed run reads the same batches as
an uninterrupted one, and each process of a many-process run reads its rows of the very
batches a single process reads.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ml_transformer import sharding
from ml_transformer.data import digits as digits_builder
from ml_transformer.data.pipeline import _check_batch_size

CATALOG_SPLITS = {
    "mnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "cifar10": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "imagenet2012": {"train": "train[:99%]", "validation": "train[99%:]", "test": "validation"},
}
EVAL_CROP_FRACTION = 0.875
SHUFFLE_STREAM, AUGMENT_STREAM = 0, 1  # spawn keys of the random streams derived from the seed

# A batch of uint8 images (an array, or a list when sizes differ) and a generator per image → uint8 [B, H, W, C].
BatchAugmentation = Callable[[np.ndarray | list[np.ndarray], Sequence[np.random.Generator]], np.ndarray]
ImageTransform = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------- transforms
def crop_flip(images: np.ndarray, rngs: Sequence[np.random.Generator], *, padding: int, flip: bool) -> np.ndarray:
    """Per image of a batch `[B, H, W, C]`, drawing from its generator: a random crop of the
    image padded by `padding` zeros (same size out), mirrored with probability 1/2 when `flip`."""
    batch, height, width, _ = images.shape
    draws = np.array([[*r.integers(0, 2 * padding + 1, size=2), r.random()] for r in rngs]).reshape(batch, 3)
    if padding:
        padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        top, left = draws[:, :2].astype(np.int64).T[:, :, None]
        rows, cols = top + np.arange(height), left + np.arange(width)
        images = padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        images = np.where((draws[:, 2] < 0.5)[:, None, None, None], images[:, :, ::-1], images)
    return images


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 `[H, W, C]` image (PIL)."""
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    return np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(height, width, channels)


def inception_crop(image: np.ndarray, rng: np.random.Generator, *, size: int, min_area: float,
                   flip: bool) -> np.ndarray:
    """A random crop of `min_area`..100% of the area, aspect ratio 3/4..4/3 (ten tries,
    then the central square), resized to `size` x `size`, mirrored with probability 1/2
    when `flip`."""
    height, width = image.shape[:2]
    for _ in range(10):
        area = height * width * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_h, crop_w = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
        if 0 < crop_h <= height and 0 < crop_w <= width:
            top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
            break
    else:
        crop_h = crop_w = min(height, width)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    out = resize(image[top:top + crop_h, left:left + crop_w], size, size)
    return out[:, ::-1] if flip and rng.random() < 0.5 else out


def resize_center_crop(image: np.ndarray, *, size: int) -> np.ndarray:
    """Resized so that the shorter side is `size / 0.875`, then the central `size` x `size`."""
    height, width = image.shape[:2]
    scale = size / EVAL_CROP_FRACTION / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = resize(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size]


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that read, decode and transform images (array_record and PIL release the GIL)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1)))


def each_image(transform: Callable, images: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """`transform(image, rng)` on every image with its own generator, stacked."""
    return np.stack(list(_pool().map(transform, images, rngs)))


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 → float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def mixup(inputs: np.ndarray, labels: np.ndarray, partner_inputs: np.ndarray, partner_labels: np.ndarray,
          num_classes: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(λ·x + (1-λ)·x', soft labels float32 [B, C] mixed alike) for examples x and their partners x'."""
    lam = np.float32(lam)
    one_hot = np.eye(num_classes, dtype=np.float32)
    return (lam * inputs + (1 - lam) * partner_inputs,
            lam * one_hot[labels] + (1 - lam) * one_hot[partner_labels])


# ---------------------------------------------------------------- reading
class InMemory:
    """A split of same-size images read once: `images` uint8 [N, H, W, C], `labels` int32 [N]."""

    def __init__(self, source: Sequence):
        records = list(_pool().map(source.__getitem__, range(len(source))))
        self.images = np.stack([r["image"] for r in records])
        self.labels = np.array([r["label"] for r in records], np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[ids], self.labels[ids]


class Streamed:
    """A split read example by example, in threads: images as a list (sizes may differ)."""

    def __init__(self, source: Sequence):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def read(self, ids: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        records = list(_pool().map(self.source.__getitem__, ids.tolist()))
        return [r["image"] for r in records], np.array([r["label"] for r in records], np.int32)


@functools.lru_cache(maxsize=4)
def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order of `size` training examples in `epoch`: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SHUFFLE_STREAM, epoch))).permutation(size)


# ---------------------------------------------------------------- the contract
class ImageData:
    """The classification data contract (`tasks/classification.py`) over TFDS data sources
    of {'image': uint8 [H, W, C], 'label': int} records, one per split.

    `train_images(images, rngs)` augments a batch (an array of same-size images, or a
    list; a generator per image) into uint8 `[B, *image_shape]`; `eval_image(image)`
    brings one image to `image_shape` (None: images are used as they are). `in_memory`:
    each split is read once into arrays (same-size images); otherwise examples are read
    per batch.
    """

    def __init__(self, sources: Mapping[str, Sequence], label_names: Sequence[str],
                 image_shape: tuple[int, int, int], train_images: BatchAugmentation,
                 eval_image: ImageTransform | None = None, *, mixup_alpha: float = 0.0, in_memory: bool = False):
        self.sources, self.label_names, self.image_shape = sources, list(label_names), tuple(image_shape)
        self.train_images, self.eval_image = train_images, eval_image
        self.mixup_alpha, self.in_memory = mixup_alpha, in_memory
        self._splits = {}

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def input_spec(self) -> tuple[tuple[int, int, int], type]:
        return self.image_shape, np.float32

    def split(self, name: str) -> InMemory | Streamed:
        """The examples of split `name`, read on first use."""
        if name not in self.sources:
            raise ValueError(f"unknown split {name!r} (one of {', '.join(self.sources)})")
        if not len(self.sources[name]):
            raise ValueError(f"split {name!r} is empty")
        if name not in self._splits:
            self._splits[name] = (InMemory if self.in_memory else Streamed)(self.sources[name])
        return self._splits[name]

    def train_batches(self, *, seed: int, batch_size: int, batch_multiple: int = 1) -> grain.MapDataset:
        """Infinite: item `step` holds `batch_size` examples (this process's rows); each epoch
        holds every training example at most once (the remainder is dropped)."""
        _check_batch_size(batch_size, batch_multiple)
        examples = self.split("train")
        if len(examples) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(examples)} training examples")
        return grain.MapDataset.range(sys.maxsize).map(
            functools.partial(self._train_batch, examples, seed, batch_size))

    def _train_batch(self, examples, seed: int, batch_size: int, step: int) -> dict:
        epoch, index = divmod(step, len(examples) // batch_size)
        ids = epoch_order(len(examples), seed, epoch)[index * batch_size:(index + 1) * batch_size]
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(AUGMENT_STREAM, step)))
        row_seeds = rng.integers(2**63, size=batch_size)
        rows = sharding.process_rows(np.arange(batch_size))
        partners = batch_size - 1 - rows  # of mixup: the global batch reversed, maybe another process's rows
        needed = np.union1d(rows, partners) if self.mixup_alpha > 0 else rows
        images, labels = examples.read(ids[needed])
        inputs = normalize(self.train_images(images, [np.random.default_rng(s) for s in row_seeds[needed]]))
        if self.mixup_alpha <= 0:
            return {"inputs": inputs, "labels": labels}
        own, other = np.searchsorted(needed, rows), np.searchsorted(needed, partners)
        inputs, labels = mixup(inputs[own], labels[own], inputs[other], labels[other], self.num_classes,
                               rng.beta(self.mixup_alpha, self.mixup_alpha))
        return {"inputs": inputs, "labels": labels}

    def eval_batches(self, split: str, *, batch_size: int, batch_multiple: int = 1) -> grain.MapDataset:
        """Every example of `split` once, in order, `batch_size` rows per batch (this
        process's rows); the last batch is completed with rows of zeros, `valid` False."""
        _check_batch_size(batch_size, batch_multiple)
        examples = self.split(split)
        num_batches = -(-len(examples) // batch_size)
        return grain.MapDataset.range(num_batches).map(functools.partial(self._eval_batch, examples, batch_size))

    def _eval_batch(self, examples, batch_size: int, index: int) -> dict:
        ids = sharding.process_rows(np.arange(index * batch_size, (index + 1) * batch_size))
        valid = ids < len(examples)
        inputs = np.zeros((len(ids), *self.image_shape), np.float32)
        labels = np.zeros(len(ids), np.int32)
        if valid.any():
            images, labels[valid] = examples.read(ids[valid])
            inputs[valid] = normalize(self._eval_images(images))
        return {"inputs": inputs, "labels": labels, "valid": valid}

    def _eval_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.eval_image is None:
            return np.asarray(images)
        return np.stack(list(_pool().map(self.eval_image, images)))

    def encode(self, raw: list[str]) -> np.ndarray:
        """Model inputs float32 [N, H, W, C] from image files: `.npy` arrays (uint8 [H, W]
        or [H, W, C], 0..255) or anything PIL reads (PNG, JPEG, ...)."""
        images = []
        for path in raw:
            image = read_image(path, self.image_shape[2])
            image = image if self.eval_image is None else self.eval_image(image)
            if image.shape != self.image_shape:
                raise ValueError(f"{path}: image of shape {list(image.shape)}, expected {list(self.image_shape)}")
            images.append(image)
        return normalize(np.stack(images)) if images else np.zeros((0, *self.image_shape), np.float32)


def read_image(path: str, channels: int) -> np.ndarray:
    """A uint8 [H, W, channels] image from a `.npy` file or an image file PIL can read."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file")
    try:
        if path.endswith(".npy"):
            image = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as pil:
                image = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f"{path}: expected uint8 [H, W, {channels}], got {image.dtype} {list(image.shape)}")
    return image


# ---------------------------------------------------------------- the datasets
def _fixed_size(sources: Mapping[str, Sequence], data_config) -> ImageData:
    """Same-size images, held in memory: pad-and-crop and flip for training, as they are
    for evaluation."""
    train = sources["train"]
    return ImageData(
        sources,
        train.dataset_info.features["label"].names,
        np.shape(train[0]["image"]),
        functools.partial(crop_flip, padding=data_config.crop_padding, flip=data_config.flip),
        mixup_alpha=data_config.mixup_alpha,
        in_memory=True,
    )


def _catalog_sources(name: str, data_dir: str) -> dict[str, Sequence]:
    """ArrayRecord data sources of a prepared catalog dataset, by our split names."""
    try:
        return {
            split: tfds.data_source(name, split=tfds_split, data_dir=data_dir or None, download=False)
            for split, tfds_split in CATALOG_SPLITS[name].items()
        }
    except (AssertionError, FileNotFoundError, NotImplementedError) as e:
        where = f" --data_dir={data_dir}" if data_dir else ""
        raise ValueError(
            f"config.data.name={name}: no prepared ArrayRecord data in "
            f"{data_dir or 'the default TFDS data_dir'}; prepare it once with "
            f"`tfds build {name} --file_format=array_record{where}`"
        ) from e


def digits(config, workdir: str) -> ImageData:
    """scikit-learn's 8x8 digits (embedded; prepared on first use)."""
    del workdir
    builder = digits_builder.prepare(config.data.data_dir or None)
    sources = {split: builder.as_data_source(split=split) for split in digits_builder.SPLITS}
    return _fixed_size(sources, config.data)


def mnist(config, workdir: str) -> ImageData:
    del workdir
    return _fixed_size(_catalog_sources("mnist", config.data.data_dir), config.data)


def cifar10(config, workdir: str) -> ImageData:
    del workdir
    return _fixed_size(_catalog_sources("cifar10", config.data.data_dir), config.data)


def imagenet2012(config, workdir: str) -> ImageData:
    """ImageNet (ILSVRC 2012), prepared once by the user from the manual download."""
    del workdir
    d = config.data
    sources = _catalog_sources("imagenet2012", d.data_dir)
    return ImageData(
        sources,
        sources["train"].dataset_info.features["label"].names,
        (d.image_size, d.image_size, 3),
        functools.partial(each_image, functools.partial(
            inception_crop, size=d.image_size, min_area=d.crop_min_area, flip=d.flip)),
        functools.partial(resize_center_crop, size=d.image_size),
        mixup_alpha=d.mixup_alpha,
    )
