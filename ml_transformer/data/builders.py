"""Preparing the files of a TFDS builder of our own, safely from several runs at once."""

from __future__ import annotations

from typing import Callable, TypeVar

import tensorflow_datasets as tfds
from absl import logging

Builder = TypeVar("Builder", bound=tfds.core.DatasetBuilder)


def prepared(make: Callable[[], Builder]) -> Builder:
    """`make()`'s builder with its files prepared on first use. Runs that prepare the same
    files at once (a sweep's runs started together) all succeed: TFDS writes to a
    temporary folder and renames it, and the runs whose rename comes second use the files
    of the first."""
    builder = make()
    try:
        builder.download_and_prepare()
    except OSError:
        builder = make()
        if not builder.is_prepared():
            raise
        logging.info("%s: prepared by another run at the same time", builder.data_dir)
    return builder
