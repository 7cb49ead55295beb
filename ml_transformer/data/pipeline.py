"""Grain pipelines of padded sequence-to-sequence batches (numpy, host side).

Examples are encoded once into int32 id arrays ending with EOS. Batches are dicts of
int32 `[B, L]` arrays `inputs` and `targets`, padded with 0; B is always a multiple of
`batch_multiple` (the number of data-parallel devices). Rows of zeros are empty rows.
Each process gets its share of every batch's rows (`sharding.process_rows`); the
length L is the whole batch's.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

from absl import logging
import grain
import numpy as np

from ml_transformer import sharding

# Evaluation batch lengths round up to multiples of this. At 32, translate_bible's 1,500 test
# verses in batches of 32 make 4 shapes to compile where 16 made 6, for 16% more tokens.
EVAL_LENGTH_MULTIPLE = 32


def decode_text(value: str | bytes) -> str:
    """Text of a TFDS text feature: `bytes` from prepared data, `str` from mock data."""
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_texts(source, keys: tuple[str, str] = ('source', 'target')) -> tuple[list[str], list[str]]:
    """Raw (source texts, target texts) of a random-access data source, in its order."""
    records = [source[i] for i in range(len(source))]
    return ([decode_text(r[keys[0]]) for r in records],
            [decode_text(r[keys[1]]) for r in records])


def encode_texts(texts: Sequence[str], tokenizer) -> list[np.ndarray]:
    """Ids of each text as an int32 array ending with EOS."""
    return [np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(texts)]


def encode_split(source, tokenizer, keys: tuple[str, str] = ('source', 'target')
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(input ids, target ids) of every example of `source`, as `encode_texts` gives them."""
    sources, targets = read_texts(source, keys)
    return encode_texts(sources, tokenizer), encode_texts(targets, tokenizer)


def _lengths(seqs: Sequence[np.ndarray]) -> np.ndarray:
    return np.fromiter(map(len, seqs), np.int64, len(seqs))


def _pad_rows(seqs: Sequence[np.ndarray], ids: np.ndarray, length: int) -> np.ndarray:
    """`[len(ids), length]` array of `seqs[i]` per row; rows with id -1 stay 0."""
    out = np.zeros((len(ids), length), np.int32)
    for row, i in enumerate(ids):
        if i >= 0:
            out[row, :len(seqs[i])] = seqs[i]
    return out


class TrainBatches(grain.MapDataset):
    """Infinite bucketed training batches: `ds[step]` is this process's rows of the batch of
    global step `step`.

    Examples longer than `max_len` tokens (input or target) are dropped (`num_dropped`).
    Each kept example goes to the smallest bucket length L >= its longer side; a batch
    of bucket L has `batch_sizes[L]` rows of length L. Epoch `e` (`batches_per_epoch`
    steps) holds every kept example exactly once: examples are shuffled with the seed
    (seed, e), cut into batches per bucket, the last batch of a bucket completed with
    empty rows, and the batches shuffled. A batch depends only on (data, settings, step),
    so a run resumed at step k reads the same batches as one never stopped.

    Give `batch_tokens` for buckets of at most that many tokens per batch (at least
    `batch_multiple` rows), or `batch_size` for one bucket: every batch `batch_size` rows
    of length `max_len`.
    """

    def __init__(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                 seed: int, max_len: int, batch_tokens: int | None = None,
                 batch_size: int | None = None, batch_multiple: int = 1,
                 bucket_boundaries: Sequence[int] | None = None):
        super().__init__()
        if len(inputs) != len(targets):
            raise ValueError(f'{len(inputs)} inputs but {len(targets)} targets')
        bounds, sizes = _buckets(max_len, batch_tokens, batch_size, batch_multiple,
                                 bucket_boundaries)
        self._inputs, self._targets, self._seed = inputs, targets, seed

        longest = np.maximum(_lengths(inputs), _lengths(targets))
        self._kept = np.flatnonzero(longest <= max_len)
        self.num_dropped = len(inputs) - len(self._kept)
        if not len(self._kept):
            raise ValueError(f'no example is at most max_len={max_len} tokens long')
        logging.info('Dropped %d of %d examples longer than max_len=%d.',
                     self.num_dropped, len(inputs), max_len)
        self._bucket = np.searchsorted(bounds, longest)  # Only read at kept examples.
        self.batch_sizes = dict(zip(bounds.tolist(), sizes.tolist()))

        counts = np.bincount(self._bucket[self._kept], minlength=len(bounds))
        num_batches = -(-counts // sizes)
        # An epoch lays the batches of all buckets out in one array of slots, bucket by
        # bucket; bucket b's members fill its slots from _slot_start[b] on.
        slots = num_batches * sizes
        self._slot_start = np.cumsum(slots) - slots
        self._member_start = np.cumsum(counts) - counts
        batch_bucket = np.repeat(np.arange(len(bounds)), num_batches)
        self._batch_rows = sizes[batch_bucket]
        self._batch_length = bounds[batch_bucket]
        self._batch_start = np.cumsum(self._batch_rows) - self._batch_rows
        self.batches_per_epoch = len(batch_bucket)
        self._plans = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f'TrainBatches(batch_sizes={self.batch_sizes}, seed={self._seed})'

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots: example id or -1 per batch row, batch order) of `epoch`."""
        rng = np.random.default_rng([self._seed, epoch])
        order = rng.permutation(self._kept)
        order = order[np.argsort(self._bucket[order], kind='stable')]
        bucket = self._bucket[order]
        slots = np.full(self._batch_rows.sum(), -1, np.int64)
        rank = np.arange(len(order)) - self._member_start[bucket]
        slots[self._slot_start[bucket] + rank] = order
        return slots, rng.permutation(self.batches_per_epoch)

    def _cached_plan(self, epoch: int):
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self._plan(epoch)
            # Replaced, never mutated, so that reader threads can share it.
            nearby = {e: p for e, p in self._plans.items() if abs(e - epoch) <= 1}
            self._plans = {**nearby, epoch: plan}
        return plan

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        if step < 0:
            raise IndexError(f'step {step} < 0')
        epoch, index = divmod(step, self.batches_per_epoch)
        slots, order = self._cached_plan(epoch)
        batch = order[index]
        start = self._batch_start[batch]
        ids = sharding.process_rows(slots[start:start + self._batch_rows[batch]])
        length = int(self._batch_length[batch])
        return {'inputs': _pad_rows(self._inputs, ids, length),
                'targets': _pad_rows(self._targets, ids, length)}


def _check_batch_size(batch_size: int, batch_multiple: int) -> None:
    if batch_multiple < 1 or batch_size < 1 or batch_size % batch_multiple:
        raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                         f'batch_multiple={batch_multiple}')


def _buckets(max_len, batch_tokens, batch_size, batch_multiple, boundaries):
    """(bucket lengths, batch size per bucket), both increasing int64 arrays."""
    if (batch_tokens is None) == (batch_size is None):
        raise ValueError('give exactly one of batch_tokens and batch_size')
    if max_len < 1:
        raise ValueError(f'max_len={max_len} must be >= 1')
    if batch_size is not None:
        _check_batch_size(batch_size, batch_multiple)
        if boundaries is not None:
            raise ValueError('bucket_boundaries go with batch_tokens, not batch_size')
        return np.array([max_len]), np.array([batch_size])
    if batch_multiple < 1 or batch_tokens < 1:
        raise ValueError(f'batch_tokens={batch_tokens} and batch_multiple={batch_multiple} '
                         'must be >= 1')
    if boundaries is None:
        boundaries = range(16, max_len, 16)
    bounds = np.asarray(list(boundaries), np.int64)
    if len(bounds) and (bounds[0] < 1 or np.any(np.diff(bounds) <= 0) or bounds[-1] > max_len):
        raise ValueError(f'bucket_boundaries {bounds.tolist()} must increase within '
                         f'[1, max_len={max_len}]')
    if not len(bounds) or bounds[-1] < max_len:
        bounds = np.append(bounds, max_len)
    return bounds, np.maximum(batch_multiple,
                              batch_tokens // bounds // batch_multiple * batch_multiple)


def _eval_batch(inputs, targets, rows: int, ids: Sequence[int]) -> dict:
    index = np.full(rows, -1, np.int32)
    index[:len(ids)] = ids
    longest = max(max(len(inputs[i]), len(targets[i])) for i in ids)
    length = -(-longest // EVAL_LENGTH_MULTIPLE) * EVAL_LENGTH_MULTIPLE
    index = sharding.process_rows(index)
    return {'inputs': _pad_rows(inputs, index, length),
            'targets': _pad_rows(targets, index, length),
            'index': index, 'valid': index >= 0}


def eval_batches(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                 batch_size: int, batch_multiple: int = 1) -> grain.MapDataset:
    """Every example once, longest first, `batch_size` per batch (the last may hold fewer).

    Every batch has the same rows, `batch_size` (fewer examples: their number rounded up to
    `batch_multiple`), so that only lengths vary, rounded up to a multiple of
    `EVAL_LENGTH_MULTIPLE`: each shape is a program to compile. Besides `inputs` and
    `targets`, a batch has `index` (int32 `[B]`: the example's position in `inputs`, -1 on
    empty rows) and `valid` (bool `[B]`, False on empty rows).
    """
    _check_batch_size(batch_size, batch_multiple)
    order = np.argsort(-np.maximum(_lengths(inputs), _lengths(targets)), kind='stable')
    rows = sharding.padded_rows(min(batch_size, len(order)), batch_multiple)
    return grain.MapDataset.source(order).batch(
        batch_size, batch_fn=functools.partial(_eval_batch, inputs, targets, rows))
