"""Model FLOP utilization: FLOPs counted by XLA, peaks from the table or a measured matmul."""

import json
import types

import jax
import jax.numpy as jnp
import pytest

from ml_transformer.train import metric_writers, throughput


def test_mfu_is_flops_per_second_over_the_peak(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(metric_writers.time, "perf_counter", lambda: next(clock))
    progress = metric_writers.Progress(0, 10, "tokens", peak_flops=1e12)
    rate, mfu = progress.update(5, 1.0, items=4000, flops=5e11)  # 2 s after the start
    progress.close()
    assert rate == 2000 and mfu == pytest.approx(0.25)


def test_compiled_flops_are_what_xla_counts_on_every_device():
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert throughput.compiled_flops(compiled) == 2 * 64 * 32 * 16
    assert throughput.compiled_flops(compiled, num_devices=4) == 4 * 2 * 64 * 32 * 16


def test_peak_flops_come_from_the_table_or_a_measured_matmul():
    device = lambda kind: types.SimpleNamespace(platform="gpu", device_kind=kind)  # noqa: E731
    assert throughput.peak_flops([device("NVIDIA H100 80GB HBM3")] * 8) == (8 * 989e12, "bfloat16 dense peak of 8 x NVIDIA H100 80GB HBM3")
    assert throughput.peak_flops([device("NVIDIA H100 PCIe")])[0] == 756e12
    assert throughput.peak_flops([device("TPU v5 lite")] * 4)[0] == 4 * 197e12
    peak, source = throughput.peak_flops([device("Some Accelerator")])
    assert peak != peak and "unknown" in source  # NaN: MFU is then NaN, not a made-up figure
    peak, source = throughput.peak_flops(jax.devices("cpu"))
    assert peak > 1e9 and source.startswith("measured")


def test_training_logs_mfu_and_shows_it(trained):
    workdir, _, result = trained
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    mfu = [row["train/mfu"] for row in logged if "train/mfu" in row]
    assert mfu and all(0 < value < 1.5 for value in mfu)
    assert " mfu=" in result.stderr
