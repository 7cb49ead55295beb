"""The trainer on a toy reversal task: the schedule, memorization, and exact resumption."""

import functools
import json
import os
import platform
import re
import threading
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ml_transformer import onednn, sharding
from ml_transformer.data.pipeline import TrainBatches
from ml_transformer.decode import beam_search
from ml_transformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.tasks.base import Task
from ml_transformer.tasks.translation import seq2seq_loss, translate
from ml_transformer.train import loop, restore
from ml_transformer.train.losses import token_metrics
from ml_transformer.train.schedules import make_schedule, transformer_schedule
from ml_transformer.train.state import TrainState, build_state, make_optimizer
from ml_transformer.train.steps import train_step

BOS, EOS, VOCAB = 2, 3, 16


def toy_pairs(n=6, seed=0):
    """Sources of random tokens (4..VOCAB-1) + EOS; targets are the reversed sources + EOS."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(4, VOCAB, size=rng.integers(3, 7)) for _ in range(n)]
    with_eos = lambda x: np.append(x, EOS).astype(np.int32)  # noqa: E731
    return [with_eos(s) for s in sources], [with_eos(s[::-1]) for s in sources]


class ReverseTask(Task):
    """The trainer's task interface over a handful of fixed pairs, all in every batch."""

    unit = "tokens"

    def __init__(self, dropout_rate: float):
        block = BlockConfig(d_model=32, num_heads=2, d_ff=64, dropout_rate=dropout_rate)
        self.model = Seq2Seq(Seq2SeqConfig(VOCAB, block, 1, 1, max_len=32, bos_id=BOS))
        self.sources, self.targets = toy_pairs()
        self.loss_fn = functools.partial(seq2seq_loss, self.model, 0.0)

    def init_params(self, rng):
        dummy = jnp.ones((1, 8), jnp.int32)
        return self.model.init(rng, dummy, dummy)["params"]

    def train_batches(self):
        return TrainBatches(self.sources, self.targets, seed=0, max_len=8, batch_size=len(self.sources))

    def evaluate(self, params, split, step):
        return {"steps_seen": float(step), "loss": abs(step - 4.0)}, []


def toy_config(total_steps, **optimizer):
    c = ml_collections.ConfigDict()
    c.seed, c.total_steps, c.log_every_steps = 0, total_steps, 5
    c.eval_every_steps = c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.best_metric = "steps_seen"
    c.micro_batches = 1
    c.model = ml_collections.ConfigDict({"d_model": 32})
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, schedule="transformer",
             learning_rate=1.0, warmup_steps=10, grad_clip_norm=0.0)
    )
    c.optimizer.update(optimizer)
    return c


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh()


def test_schedule_matches_paper_formula():
    d_model, warmup = 512, 4000
    schedule = transformer_schedule(d_model, warmup)
    for count in [0, 1, 10, 3998, 3999, 4000, 4001, 20000, 100000]:
        step = count + 1  # the paper's step number
        expected = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert float(schedule(count)) == pytest.approx(expected, rel=1e-5)


def test_gradient_clipping_rescales_gradients_above_the_global_norm():
    """Two Adam updates (the first alone is blind to gradient scale): with clipping at norm 1
    they equal Adam's on gradients scaled to norm 1 by hand, and differ from unclipped Adam's."""
    schedule = optax.constant_schedule(0.1)
    clipped, plain = (make_optimizer(toy_config(1, grad_clip_norm=clip), schedule) for clip in (1.0, 0.0))
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    steps = [{"w": jnp.array([30.0, -40.0, 0.0]), "b": jnp.array([0.0, 0.0])},  # global norm 50
             {"w": jnp.array([0.1, 0.2, -0.2]), "b": jnp.array([0.0, 0.2])}]  # norm 0.36: kept

    def updates(tx, grads_by_step):
        state = tx.init(params)
        for grads in grads_by_step:
            update, state = tx.update(grads, state, params)
        return update

    by_hand = [jax.tree.map(lambda g: g / 50.0, steps[0]), steps[1]]
    for a, b in zip(jax.tree.leaves(updates(clipped, steps)), jax.tree.leaves(updates(plain, by_hand))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(updates(clipped, steps)["w"], updates(plain, steps)["w"], rtol=1e-3)


def test_label_smoothed_loss_matches_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11))
    labels = rng.integers(0, 11, size=(2, 5))
    sums = token_metrics(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), 0.1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.full(logits.shape, 0.1 / 10)
    np.put_along_axis(target, labels[..., None], 0.9, axis=-1)
    kl = (target * (np.log(target) - log_p)).sum(-1)  # cross-entropy minus the target's entropy
    real = labels > 0
    assert float(sums["loss_sum"]) == pytest.approx((kl * real).sum(), rel=1e-5)
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    assert float(sums["nll_sum"]) == pytest.approx((nll * real).sum(), rel=1e-5)
    assert float(sums["tokens"]) == real.sum()


# (loss, NLL, correct tokens) of the first 8 steps below, as computed before the train step
# was made faster (loss and metrics without a vocabulary-sized log-softmax array, oneDNN's
# dots on x86 CPUs): speed work must leave the numbers equal within float32 rounding.
LOSS_CURVE = [(4.010782, 4.743943, 0), (3.551208, 4.250946, 2), (3.173442, 3.838890, 5), (2.894885, 3.528856, 4),
              (2.627312, 3.215509, 8), (2.380105, 2.918432, 9), (2.197315, 2.683334, 9), (2.307538, 2.815220, 12)]


def test_fixed_seed_loss_curve_is_unchanged_by_speed_work(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS")  # which turns oneDNN off for the other tests (conftest)
    block = BlockConfig(d_model=32, num_heads=4, d_ff=64, dropout_rate=0.1, pre_ln=True)
    model = Seq2Seq(Seq2SeqConfig(64, block, 2, 2, max_len=32, bos_id=BOS))
    config = toy_config(len(LOSS_CURVE))
    tx = make_optimizer(config, make_schedule(config))
    rng = np.random.default_rng(0)
    tokens, lengths = rng.integers(4, 64, (2, 8, 12)).astype(np.int32), rng.integers(3, 13, (2, 8))
    batch = {key: jnp.asarray(np.where(np.arange(12) < lengths[i][:, None], tokens[i], 0))
             for i, key in enumerate(("inputs", "targets"))}
    state = TrainState.create(model.init(jax.random.key(0), batch["inputs"], batch["targets"])["params"], tx)
    step = onednn.jit(functools.partial(train_step, loss_fn=functools.partial(seq2seq_loss, model, 0.1), tx=tx,
                                        unit="tokens"))
    for expected in LOSS_CURVE:
        state, sums = step(state, batch, jax.random.key(1))
        tokens = float(sums["tokens"])
        np.testing.assert_allclose([sums["loss_sum"] / tokens, sums["nll_sum"] / tokens], expected[:2], rtol=2e-6)
        assert int(sums["correct"]) == expected[2]


def test_train_step_hands_its_dots_to_onednn_on_x86_cpus_unless_xla_flags_say_otherwise(mesh, monkeypatch):
    assert onednn.compiler_options() is None  # XLA_FLAGS=--xla_cpu_use_onednn=false (conftest)
    monkeypatch.delenv("XLA_FLAGS")
    task, config = ReverseTask(dropout_rate=0.0), toy_config(1)
    tx, _, abstract, init = build_state(task, config, mesh)
    step = loop.compile_train_step(task, config, mesh, tx, abstract)
    step(init(), sharding.to_global(task.train_batches()[0], mesh), jax.random.key(0))
    (compiled, _), = step.compiled.values()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert ("onednn" in compiled.as_text()) == x86
    assert onednn.compiler_options([types.SimpleNamespace(platform="gpu")]) is None
    monkeypatch.setattr(onednn.platform, "machine", lambda: "aarch64")
    assert onednn.compiler_options(jax.devices("cpu")) is None

def test_tiny_model_memorizes_and_beam_search_returns_targets(tmp_path, mesh):
    task = ReverseTask(dropout_rate=0.0)
    state = loop.train(task, toy_config(200, warmup_steps=30), str(tmp_path), mesh)
    width = max(map(len, task.sources))
    inputs = jnp.asarray([np.pad(s, (0, width - len(s))) for s in task.sources])
    search = functools.partial(translate, task.model, state.params, inputs, alpha=0.6, extra_len=4,
                               bos_id=BOS, eos_id=EOS)
    beam, greedy = np.asarray(search(beam_size=4)), np.asarray(search(beam_size=1))
    for row, target in zip(beam, task.targets):
        np.testing.assert_array_equal(row[: len(target)], target)
        assert not row[len(target):].any()
    np.testing.assert_array_equal(greedy, beam)  # a confident model: beam 4 agrees with greedy
    for beam_size, cached in [(1, greedy), (4, beam)]:  # recomputing the prefix finds the same
        np.testing.assert_array_equal(search(beam_size=beam_size, cached=False), cached)
    # Beam search with one beam is greedy search.
    variables = {"params": state.params}
    memory, cache = task.model.apply(variables, inputs, width + 4, method=Seq2Seq.start_decoding)
    step_fn = functools.partial(task.model.apply, variables, memory=memory, method=Seq2Seq.decode_step)
    one_beam, _ = beam_search(step_fn, cache, batch_size=len(inputs), beam_size=1, alpha=0.6,
                              max_len=width + 4, bos_id=BOS, eos_id=EOS)
    np.testing.assert_array_equal(np.asarray(one_beam)[:, 0], greedy)


def test_resumed_training_equals_uninterrupted(tmp_path, mesh):
    task = ReverseTask(dropout_rate=0.3)  # dropout noise must also resume exactly
    straight = loop.train(task, toy_config(8), str(tmp_path / "straight"), mesh)
    loop.train(task, toy_config(4), str(tmp_path / "stopped"), mesh)
    resumed = loop.train(task, toy_config(8), str(tmp_path / "stopped"), mesh)
    assert int(resumed.step) == 8
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    # The last logged interval (steps 6-8) saw the same batches and noise in both runs.
    final = lambda run: [r for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "train/loss" in r][-1]  # noqa: E731
    assert final("stopped")["train/loss"] == pytest.approx(final("straight")["train/loss"], abs=1e-7)


def test_best_checkpoint_is_kept_apart_and_averages_are_means(tmp_path, mesh):
    task, workdir = ReverseTask(dropout_rate=0.0), str(tmp_path)
    config = toy_config(8)
    config.eval_every_steps = config.checkpoint_every_steps = 2
    config.best_metric = "loss"  # |step - 4|: lower is better, so step 4 is best
    loop.train(task, config, workdir, mesh)
    assert restore.saved_checkpoints(config, workdir) == ["6", "8", "best"]  # keep_checkpoints=2
    best = restore.restore_params(task, config, workdir, mesh, "best")
    assert (best.step, best.name) == (4, "4")
    six, eight = (restore.restore_params(task, config, workdir, mesh, step).params for step in ("6", "8"))
    average = restore.restore_params(task, config, workdir, mesh, "avg:2")
    assert (average.step, average.name) == (8, "avg2-8")
    for mean, a, b in zip(jax.tree.leaves(average.params), jax.tree.leaves(six), jax.tree.leaves(eight)):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(six)[0], jax.tree.leaves(eight)[0])
    for which in ("avg:3", "avg:0", "avg:x", "5"):
        with pytest.raises(ValueError, match=f"--checkpoint={which}"):
            restore.restore_params(task, config, workdir, mesh, which)
    config.total_steps = 10  # resuming keeps the best found so far
    loop.train(task, config, workdir, mesh)
    assert restore.restore_params(task, config, workdir, mesh, "best").step == 4


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_micro_batches_accumulate_to_the_gradient_of_the_whole_batch(micro_batches):
    task = ReverseTask(dropout_rate=0.0)  # 6 pairs of different lengths: slices weigh by tokens
    tx = optax.sgd(1.0)  # the update is minus the gradient itself
    state = TrainState.create(task.init_params(jax.random.key(0)), tx)
    batch = task.train_batches()[0]

    def step(micro_batches=1):
        compiled = jax.jit(functools.partial(train_step, loss_fn=task.loss_fn, tx=tx, unit="tokens",
                                             micro_batches=micro_batches))
        return compiled(state, batch, jax.random.key(1))

    (whole, whole_sums), (sliced, sliced_sums) = step(), step(micro_batches)
    for a, b, before in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sliced.params),
                            jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a - before, b - before, rtol=1e-4, atol=1e-7)
    for key in ("loss_sum", "tokens"):
        assert float(whole_sums[key]) == pytest.approx(float(sliced_sums[key]), rel=1e-6)
    with pytest.raises(ValueError, match="micro_batches=4 does not divide the batch of 6 rows"):
        step(micro_batches=4)


def test_accumulating_micro_batches_counts_the_flops_of_the_whole_batch(mesh):
    """XLA counts a loop's body once: without care, MFU would drop by the number of micro-batches."""
    task = ReverseTask(dropout_rate=0.0)
    batch = sharding.to_global(task.train_batches()[0], mesh)
    flops = {}
    for micro_batches in (1, 2):
        config = toy_config(1)
        config.micro_batches = micro_batches
        tx, _, abstract, init = build_state(task, config, mesh)
        *_, flops[micro_batches] = loop.compile_train_step(task, config, mesh, tx, abstract)(init(), batch,
                                                                                              jax.random.key(0))
    assert flops[2] == pytest.approx(flops[1], rel=0.05)  # lowered and compiled counts differ a little


def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_resumes(tmp_path, mesh, caplog):
    task = ReverseTask(dropout_rate=0.3)
    config = toy_config(8)
    config.checkpoint_every_steps, config.keep_checkpoints = 2, 3
    straight = loop.train(task, config, str(tmp_path / "straight"), mesh)
    config.total_steps = 6
    loop.train(task, config, str(tmp_path / "damaged"), mesh)
    latest = tmp_path / "damaged" / "checkpoints" / "6"
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0garbage" * 3)
    config.total_steps = 8
    with caplog.at_level("WARNING"):
        resumed = loop.train(task, config, str(tmp_path / "damaged"), mesh)
    assert "step 6 cannot be read" in caplog.text
    assert (tmp_path / "damaged" / "checkpoints" / "unreadable-6").is_dir()  # kept, out of the way
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_loss_stops_at_its_step_and_leaves_the_checkpoints_before_it(tmp_path, mesh):
    task = ReverseTask(dropout_rate=0.0)
    config = toy_config(50, learning_rate=1e35, warmup_steps=1)  # steps of ~1e34: overflow
    config.checkpoint_every_steps = 1
    with pytest.raises(loop.NonFiniteLoss, match=r"at step (\d+)") as failure:
        loop.train(task, config, str(tmp_path), mesh)
    bad = int(re.search(r"at step (\d+)", str(failure.value)).group(1))
    assert 1 < bad < 50
    restored = restore.restore_params(task, config, str(tmp_path), mesh)
    assert restored.step == bad - 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_transformer_schedule_scales_the_papers_formula():
    config = toy_config(1, learning_rate=0.5, warmup_steps=10)
    schedule = make_schedule(config)  # d_model 32
    for count in [0, 4, 9, 10, 50]:
        step = count + 1
        assert float(schedule(count)) == pytest.approx(0.5 * 32**-0.5 * min(step**-0.5, step * 10**-1.5), rel=1e-6)


def test_cosine_schedule_warms_up_linearly_then_follows_half_a_cosine():
    config = toy_config(100, schedule="cosine", learning_rate=0.02, warmup_steps=10)
    schedule = make_schedule(config)
    for count in [0, 5, 10, 40, 75, 100]:
        if count <= 10:
            expected = 0.02 * count / 10
        else:
            expected = 0.02 * 0.5 * (1 + np.cos(np.pi * (count - 10) / 90))
        assert float(schedule(count)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_adamw_decays_weights_by_rate_times_decay_beside_the_adam_step():
    """Adam's first step is the gradient's sign (m/sqrt(v) = g/|g|); AdamW adds lr·wd·param."""
    config = toy_config(1, name="adamw", weight_decay=0.1, eps=1e-12)
    tx = make_optimizer(config, optax.constant_schedule(0.01))
    params = {"w": jnp.array([2.0, -4.0, 1.0])}
    grads = {"w": jnp.array([0.5, 0.5, -3.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = -0.01 * (np.sign(grads["w"]) + 0.1 * params["w"])
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_logged_learning_rate_is_the_schedules_rate_of_the_last_step(tmp_path, mesh):
    config = toy_config(10, learning_rate=0.5, warmup_steps=4)
    loop.train(ReverseTask(dropout_rate=0.0), config, str(tmp_path), mesh)
    logged = {r["step"]: r["train/learning_rate"] for r in read_jsonl(tmp_path / "metrics.jsonl")
              if "train/learning_rate" in r}
    assert sorted(logged) == [5, 10]  # log_every_steps 5
    for step, rate in logged.items():  # the rate of the update that made step `step` (paper's step `step`)
        assert rate == pytest.approx(0.5 * 32**-0.5 * min(step**-0.5, step * 4**-1.5), rel=1e-6)


def test_batches_on_one_cpu_device_run_side_by_side_and_come_back_in_order():
    """`map_batches` on one CPU device: one thread per core, each batch waiting at a barrier
    that only as many batches running at once as there are cores pass."""
    cores = len(os.sched_getaffinity(0))
    barrier = threading.Barrier(cores, timeout=60)

    def doubled(x):
        barrier.wait()
        return 2 * x

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    assert sharding.map_batches(doubled, range(3 * cores), mesh) == [2 * x for x in range(3 * cores)]


def test_map_batches_compiles_each_shape_once_ahead_while_earlier_batches_run():
    """With `compile`: one compilation per shape, in the order batches first need them, on a
    thread that goes on while batches run (the first batch waits for the last shape's
    compilation), and no batch runs before its shape is compiled."""
    batches = [np.ones(shape) for shape in [(2, 3), (2, 3), (2, 5), (2, 3), (1, 5), (2, 5)]]
    compiled, last_compiled = [], threading.Event()

    def compile(batch):
        compiled.append(batch.shape)
        if batch.shape == (1, 5):
            last_compiled.set()

    def run(batch):
        assert batch.shape in compiled
        if batch is batches[0]:
            assert last_compiled.wait(timeout=60)
        return batch.size

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    assert sharding.map_batches(run, batches, mesh, compile=compile) == [b.size for b in batches]
    assert compiled == [(2, 3), (2, 5), (1, 5)]

    def failed(batch):
        raise ValueError(f"cannot compile {batch.shape}")

    with pytest.raises(ValueError, match=r"cannot compile \(2, 3\)"):
        sharding.map_batches(run, batches, mesh, compile=failed)
