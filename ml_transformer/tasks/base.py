"""The task interface: what the training loop, `main`'s modes and the sweeps need from a
kind of model, declared once; and what tasks share.

A task is built as `Task(config, workdir, mesh)` and found by the name in `config.task`
(`tasks.TASKS`). A new kind of model is a model module, a task module registered there,
and an experiment file.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

import grain
import jax
import jax.numpy as jnp


class Task(Protocol):
    """One kind of model with its data, loss, evaluation and prediction."""

    config: Any
    # What training throughput counts: "tokens" or "examples" (metric sums of that name).
    unit: str
    # Adapts a restored parameter whose shape differs from the model's (e.g. a ViT's
    # position table at another image size), or None: such a parameter is an error.
    resize_param: Callable | None = None
    # What each of `evaluate`'s rows holds (the columns of eval/*.tsv).
    row_names: tuple[str, ...] = ("source", "reference", "hypothesis")

    def init_params(self, rng) -> Any:
        """Fresh parameters."""

    def loss_fn(self, params, batch: dict, rng, train: bool) -> tuple[jax.Array, dict]:
        """(mean loss, metric sums) of a global batch."""

    def train_batches(self) -> grain.MapDataset:
        """Infinite: item `step` is this process's rows of that step's batch, always the same."""

    def evaluate(self, params, split: str, step: int, *, full: bool = False) -> tuple[dict, list | None]:
        """(metrics, rows (`row_names`) shown and written, or None) over a split; `full` at
        the end of training and in `--mode=eval`."""

    def choose_decoding(self, params, checkpoint: str, workdir: str) -> None:
        """Settles, for this checkpoint, what the config leaves to validation data (e.g. the
        length penalty of beam search); nothing by default."""

    def predict(self, params, lines: list[str], numbers: list[int]) -> list[str]:
        """One answer per input line (line `numbers[i]` of the input is `lines[i]`)."""

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """Paths of the attention pictures drawn for the input lines."""


def summed(metric_sums: Callable[[dict], dict], batches: Iterable[dict]) -> dict:
    """The sums of `metric_sums(batch)` over `batches`, fetched to the host."""
    total = None
    for batch in batches:
        sums = metric_sums(batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return jax.device_get(total)
