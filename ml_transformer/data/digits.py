"""Handwritten digits from scikit-learn (`load_digits`, no network) as a TFDS builder.

1,797 grey images of 8x8 pixels, 10 classes. The source values 0..16 are stored as
uint8 `[8, 8, 1]` scaled to 0..255 (`round(v · 255 / 16)`). The split is stratified and
fixed: each class's examples, shuffled with `SPLIT_SEED`, give their first 70% (rounded)
to train, the next 15% (rounded) to validation and the rest to test (1,258 / 269 / 270).
Each split keeps `load_digits` order; `index` is the position there.
"""

from __future__ import annotations

from collections.abc import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ml_transformer.data.builders import prepared

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.70, 0.15)  # train, validation; test takes the rest
SPLIT_SEED = 0


def load() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8, 1] in 0..255, labels int64 [1797]) in `load_digits` order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def split_assignment(labels: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """The split name of each example: stratified 70/15/15 per class (see module docstring)."""
    assignment = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(FRACTIONS[0] * len(members))
        n_validation = round(FRACTIONS[1] * len(members))
        assignment[members[:n_train]] = "train"
        assignment[members[n_train:n_train + n_validation]] = "validation"
        assignment[members[n_train + n_validation:]] = "test"
    return assignment


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits with a fixed stratified split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS derives this path through `importlib_resources`, a package it does not install.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                "index": tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data is inside scikit-learn.
        images, labels = load()
        assignment = split_assignment(labels)
        return {
            split: self._generate_examples(images, labels, np.flatnonzero(assignment == split))
            for split in SPLITS
        }

    def _generate_examples(self, images, labels, indices) -> Iterator[tuple[int, dict]]:
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i]), "index": int(i)}


def prepare(data_dir: str | None = None) -> Digits:
    """The builder, its files prepared on first use."""
    return prepared(lambda: Digits(data_dir=data_dir))
