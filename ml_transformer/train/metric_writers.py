"""Where metrics go: `metrics.jsonl`, TensorBoard events and a progress bar.

Only process 0 writes; the others get no-op writers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import tqdm
from tensorboardX import SummaryWriter


class MetricWriter:
    """Appends `{'step': s, **metrics}` lines to `workdir/metrics.jsonl` and scalars to `workdir/tb`."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(name, value, int(step))
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


class Progress:
    """A progress bar over training steps with loss, throughput, model FLOP utilization
    (MFU: FLOP/s over `peak_flops`) and ETA."""

    def __init__(self, start: int, total: int, unit: str, peak_flops: float):
        self.unit, self.peak_flops = unit, peak_flops
        self.bar = tqdm.tqdm(
            initial=start,
            total=total,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=jax.process_index() != 0,
            mininterval=2.0,
        )
        self.last_time, self.last_step = time.perf_counter(), start

    def update(self, step: int, loss: float, items: float, flops: float) -> tuple[float, float]:
        """Moves to `step`; `items` tokens/examples and `flops` FLOPs were processed since
        the last update. Returns (items/s, MFU)."""
        now = time.perf_counter()
        seconds = max(now - self.last_time, 1e-9)
        rate, mfu = items / seconds, flops / seconds / self.peak_flops
        self.bar.update(step - self.last_step)
        self.bar.set_postfix_str(f"loss={loss:.3f} {self.unit}/s={rate:,.0f} mfu={mfu:.1%}", refresh=False)
        self.last_time, self.last_step = now, step
        return rate, mfu

    def reset_clock(self) -> None:
        """Excludes time spent outside training steps (evaluation, saving) from the rate."""
        self.last_time = time.perf_counter()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
