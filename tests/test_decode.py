"""Tests of greedy search, beam search and sampling against NumPy references on toy models."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from ml_transformer import decode, sharding
from ml_transformer.data import pipeline
from ml_transformer.tasks.translation import TranslationTask
from ml_transformer.train import restore

V = 5
PAD, BOS, EOS = 0, 1, 2
NON_EOS = tuple(t for t in range(V) if t != EOS)


class Toy:
    """A model whose logits depend on the previous token, the counts of all tokens fed so
    far (a batched state leaf, so a wrong beam gather changes the results), a per-example
    source bias (batched, never updated) and the step number (a scalar state leaf)."""

    def __init__(self, seed: int, sharpness: float = 1.0, eos_bias: float = 0.0,
                 eos_drift: float = 0.4, batch: int = 64):
        rng = np.random.default_rng(seed)
        f32 = lambda x: x.astype(np.float32).astype(np.float64)
        self.table = f32(sharpness * rng.normal(size=(V, V)))
        self.mix = f32(rng.normal(size=(V, V)))
        self.source = f32(rng.normal(size=(batch, V)))
        self.eos_bias = f32(eos_bias * np.eye(V)[EOS])
        self.eos_drift = f32(eos_drift * np.eye(V)[EOS])

    def init_state(self, batch: int) -> dict:
        return {
            "source": jnp.asarray(self.source[:batch], jnp.float32),
            "history": jnp.zeros((batch, V), jnp.float32),
            "step": jnp.int32(0),
        }

    def step(self, tokens, state):
        prev = tokens[:, 0]
        history = state["history"] + jax.nn.one_hot(prev, V)
        logits = (jnp.asarray(self.table, jnp.float32)[prev]
                  + history @ jnp.asarray(self.mix, jnp.float32)
                  + state["source"]
                  + jnp.asarray(self.eos_bias, jnp.float32)
                  + state["step"].astype(jnp.float32) * jnp.asarray(self.eos_drift, jnp.float32))
        return logits, {"source": state["source"], "history": history, "step": state["step"] + 1}

    def logprobs(self, b: int, fed) -> np.ndarray:
        """float64 log-probabilities of the next token after feeding `fed` (BOS first)."""
        history = np.bincount(np.asarray(fed), minlength=V).astype(np.float64)
        logits = (self.table[fed[-1]] + history @ self.mix + self.source[b] + self.eos_bias
                  + (len(fed) - 1) * self.eos_drift)
        return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()


TOY = Toy(seed=0, eos_bias=-1.5, eos_drift=0.5)
# Peaked, with EOS either very unlikely or very likely: greedy's path is then also the
# most likely of the hypotheses that end on it (beam search with one beam returns the
# best of those, which for a flat model can be an early EOS that greedy passed by).
PEAKED_TOY = Toy(seed=2, sharpness=3.0, eos_bias=-12.0, eos_drift=4.0)


@functools.cache
def compiled(search, toy, **static):
    """`search` bound to the toy and static arguments, jitted once."""
    return jax.jit(lambda *args, **kwargs: search(toy.step, *args, **static, **kwargs))


def penalty(length: int, alpha: float, form: str = "gnmt") -> float:
    return ((5.0 + length) / 6.0) ** alpha if form == "gnmt" else float(length) ** alpha


def score(toy: Toy, b: int, seq, alpha: float, form: str = "gnmt") -> float:
    """Length-penalised log-probability of `seq` (EOS included) for example b."""
    fed, total = [BOS], 0.0
    for token in seq:
        total += toy.logprobs(b, fed)[token]
        fed.append(token)
    return total / penalty(len(seq), alpha, form)


def hypothesis(row: np.ndarray, limit: int) -> tuple:
    """The tokens up to EOS, checking that EOS comes within `limit` and zeros follow it."""
    ends = np.flatnonzero(row == EOS)
    assert ends.size, f"no EOS in {row}"
    length = ends[0] + 1
    assert length <= limit, f"{row} is longer than {limit}"
    assert not row[length:].any(), f"{row} has tokens after EOS"
    return tuple(int(t) for t in row[:length])


def padded(seq, max_len: int) -> np.ndarray:
    return np.array(list(seq) + [PAD] * (max_len - len(seq)))


def numpy_greedy(toy: Toy, b: int, limit: int) -> tuple:
    seq = []
    while not seq or seq[-1] != EOS:
        forced = len(seq) == limit - 1
        seq.append(EOS if forced else int(np.argmax(toy.logprobs(b, [BOS] + seq))))
    return tuple(seq)


def numpy_beam(toy: Toy, b: int, beam: int, alpha: float, limit: int) -> list:
    """Beam search without early stopping: the `beam` best finished (sequence, score)."""
    alive, finished = [((), 0.0)], []
    for length in range(1, limit + 1):
        grown = []
        for seq, logp in alive:
            logprobs = toy.logprobs(b, (BOS,) + seq)
            finished.append((seq + (EOS,), (logp + logprobs[EOS]) / penalty(length, alpha)))
            if length < limit:
                grown += [(seq + (t,), logp + logprobs[t]) for t in NON_EOS]
        alive = sorted(grown, key=lambda h: -h[1])[:beam]
    return sorted(finished, key=lambda h: -h[1])[:beam]


def test_expand_and_gather_beams():
    tree = {"rows": jnp.arange(6).reshape(2, 3), "index": jnp.int32(7)}
    expanded = decode.expand_to_beams(tree, 2)
    np.testing.assert_array_equal(expanded["rows"][:, 0], [0, 0, 3, 3])
    assert expanded["index"].shape == () and int(expanded["index"]) == 7

    beams = {"rows": jnp.arange(4) * 10, "index": jnp.int32(7)}  # beam k of example b: 20b + 10k
    gathered = decode.gather_beams(beams, jnp.array([[1, 0, 1], [1, 1, 0]]))
    np.testing.assert_array_equal(gathered["rows"], [10, 0, 10, 30, 30, 20])
    assert gathered["index"].shape == () and int(gathered["index"]) == 7


def test_argmax_takes_the_first_of_tied_maxima():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [-jnp.inf] * 4, [0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(decode.argmax(logits), [1, 0, 3])
    many_ties = jnp.round(jax.random.normal(jax.random.key(0), (2, 50, 4000)), 1)
    np.testing.assert_array_equal(decode.argmax(many_ties), np.argmax(np.asarray(many_ties), axis=-1))


def test_greedy_matches_numpy_argmax_loop():
    max_len, limits = 8, [8, 2, 5]
    out = compiled(decode.greedy_search, TOY, batch_size=3, max_len=max_len, bos_id=BOS,
                   eos_id=EOS)(TOY.init_state(3), max_lens=jnp.array(limits))
    expected = [numpy_greedy(TOY, b, limit) for b, limit in enumerate(limits)]
    natural = [numpy_greedy(TOY, b, max_len) for b in range(3)]
    assert len(natural[0]) < limits[0] and len(natural[1]) > limits[1]  # one ends, one is cut
    np.testing.assert_array_equal(np.asarray(out), [padded(seq, max_len) for seq in expected])


def test_searches_stop_once_every_sequence_has_ended():
    calls = []

    def eos_always(tokens, state):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.tile(jnp.array([0.0, 0.0, 30.0, 0.0, 0.0]), (tokens.shape[0], 1)), state

    state = {"step": jnp.int32(0)}
    out = jax.jit(lambda s: decode.greedy_search(
        eos_always, s, batch_size=2, max_len=20, bos_id=BOS, eos_id=EOS))(state)
    jax.block_until_ready(out)
    assert len(calls) == 1 and (np.asarray(out)[:, 0] == EOS).all()

    calls.clear()
    tokens, _ = jax.jit(lambda s: decode.beam_search(
        eos_always, s, batch_size=2, beam_size=2, alpha=0.0, max_len=20, bos_id=BOS,
        eos_id=EOS))(state)
    jax.block_until_ready(tokens)
    assert len(calls) == 2  # one step for the best hypothesis, one for the second


def test_beam_size_one_equals_greedy():
    limits = [8, 3, 6, 8]
    kwargs = dict(batch_size=4, max_len=8, bos_id=BOS, eos_id=EOS)
    state, max_lens = PEAKED_TOY.init_state(4), jnp.array(limits)
    greedy = compiled(decode.greedy_search, PEAKED_TOY, **kwargs)(state, max_lens=max_lens)
    tokens, _ = compiled(decode.beam_search, PEAKED_TOY, beam_size=1, **kwargs)(
        state, alpha=0.0, max_lens=max_lens)
    greedy = np.asarray(greedy)
    slack = [limit - len(hypothesis(row, limit)) for row, limit in zip(greedy, limits)]
    assert len({tuple(row) for row in greedy}) > 2 and min(slack) == 0 < max(slack)
    np.testing.assert_array_equal(np.asarray(tokens)[:, 0], greedy)


@pytest.mark.parametrize("alpha,form", [(0.0, "gnmt"), (0.6, "gnmt"), (1.0, "power")])
def test_large_beam_finds_best_hypotheses_by_enumeration(alpha, form):
    max_len, limits, beam = 4, [4, 2, 3], len(NON_EOS) ** 3  # every alive prefix fits
    search = compiled(decode.beam_search, TOY, batch_size=3, beam_size=beam, max_len=max_len,
                      bos_id=BOS, eos_id=EOS, penalty=form)
    tokens, scores = search(TOY.init_state(3), alpha=alpha, max_lens=jnp.array(limits))
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    for b, limit in enumerate(limits):
        every = [body + (EOS,)
                 for n in range(limit) for body in itertools.product(NON_EOS, repeat=n)]
        exact = sorted(((seq, score(TOY, b, seq, alpha, form)) for seq in every), key=lambda h: -h[1])
        found = min(beam, len(exact))
        assert exact[0][1] - exact[1][1] > 1e-3
        assert hypothesis(tokens[b, 0], limit) == exact[0][0]
        np.testing.assert_allclose(scores[b, :found], [s for _, s in exact[:found]], atol=1e-4)
        assert (scores[b, found:] == -np.inf).all() and not tokens[b, found:].any()
        for k in range(found):
            seq = hypothesis(tokens[b, k], limit)
            np.testing.assert_allclose(scores[b, k], score(TOY, b, seq, alpha, form), atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_matches_numpy_beam_search(alpha):
    max_len, limits, beam = 7, [7, 3, 5, 6], 3
    search = compiled(decode.beam_search, TOY, batch_size=4, beam_size=beam, max_len=max_len,
                      bos_id=BOS, eos_id=EOS)
    tokens, scores = search(TOY.init_state(4), alpha=alpha, max_lens=jnp.array(limits))
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    for b, limit in enumerate(limits):
        expected = numpy_beam(TOY, b, beam, alpha, limit)
        assert [hypothesis(row, limit) for row in tokens[b]] == [seq for seq, _ in expected]
        np.testing.assert_allclose(scores[b], [s for _, s in expected], atol=1e-4)


def test_length_penalty_forms_match_their_formulas():
    lengths = jnp.array([1, 4, 30])
    np.testing.assert_allclose(decode.length_penalty(lengths, 0.6, "gnmt"), ((5 + np.array([1, 4, 30])) / 6) ** 0.6,
                               rtol=1e-6)
    np.testing.assert_allclose(decode.length_penalty(lengths, 0.6, "power"), np.array([1, 4, 30]) ** 0.6, rtol=1e-6)
    with pytest.raises(ValueError, match="length penalty 'linear'"):
        decode.length_penalty(lengths, 1.0, "linear")


def test_beam_search_does_not_stop_at_a_shorter_worse_hypothesis():
    """Alpha 0: [EOS] (p 0.45) is found first, then [3, EOS] (0.55 * 0.99), more likely. A
    search that stopped once its best candidate had ended, or once `beam_size` had
    ended, would return [EOS]."""
    first = jnp.log(jnp.array([1e-9, 1e-9, 0.45, 0.55, 1e-9]))
    then = jnp.log(jnp.array([1e-9, 1e-9, 0.99, 0.01, 1e-9]))

    def step(tokens, state):
        logits = jnp.where(state["step"] == 0, first, then)
        return jnp.tile(logits, (tokens.shape[0], 1)), {"step": state["step"] + 1}

    for beam in (1, 2):
        tokens, scores = jax.jit(lambda s: decode.beam_search(
            step, s, batch_size=1, beam_size=beam, alpha=0.0, max_len=6, bos_id=BOS, eos_id=EOS))({"step": jnp.int32(0)})
        assert hypothesis(np.asarray(tokens)[0, 0], 6) == (3, EOS)
        assert float(scores[0, 0]) == pytest.approx(np.log(0.55 * 0.99), abs=1e-5)


def test_beam_search_waits_for_longer_hypotheses_favoured_by_the_penalty():
    """First step: EOS 0.6, token 3 0.4; then token 3 is near certain until EOS at the end.
    With alpha = 2 the long hypothesis wins although its log-probability is lower, so the
    search must not stop once [EOS] is found."""
    first = jnp.log(jnp.array([1e-9, 1e-9, 0.6, 0.4, 1e-9]))
    middle, last = 20.0 * jax.nn.one_hot(3, V), 20.0 * jax.nn.one_hot(EOS, V)

    def step(tokens, state):
        t = state["step"]
        logits = jnp.where(t == 0, first, jnp.where(t < 9, middle, last))
        return jnp.tile(logits, (tokens.shape[0], 1)), {"step": t + 1}

    search = jax.jit(lambda alpha: decode.beam_search(
        step, {"step": jnp.int32(0)}, batch_size=1, beam_size=1, alpha=alpha, max_len=12,
        bos_id=BOS, eos_id=EOS, max_lens=jnp.array([10])))
    assert hypothesis(np.asarray(search(0.0)[0])[0, 0], 10) == (EOS,)
    assert hypothesis(np.asarray(search(2.0)[0])[0, 0], 10) == (3,) * 9 + (EOS,)


@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=1e-4),
                                     dict(temperature=3.0, top_k=1)])
def test_sampling_without_randomness_is_greedy(options):
    limits = jnp.array([8, 2, 5])
    kwargs = dict(batch_size=3, max_len=8, bos_id=BOS, eos_id=EOS)
    greedy = compiled(decode.greedy_search, TOY, **kwargs)(TOY.init_state(3), max_lens=limits)
    sampled = compiled(decode.sample, TOY, **kwargs, **options)(
        TOY.init_state(3), jax.random.key(0), max_lens=limits)
    np.testing.assert_array_equal(np.asarray(sampled), np.asarray(greedy))


def sample_top2(rng):
    return compiled(decode.sample, TOY, batch_size=64, max_len=6, bos_id=BOS, eos_id=EOS,
                    temperature=2.0, top_k=2)(TOY.init_state(64), rng)


def test_top_k_samples_only_the_k_best_tokens():
    out = np.asarray(sample_top2(jax.random.key(0)))
    ranks = []
    for b, row in enumerate(out):
        seq = hypothesis(row, 6)
        for i, token in enumerate(seq[:5]):  # the sixth token is forced
            order = np.argsort(-TOY.logprobs(b, (BOS,) + seq[:i]))
            ranks.append(int(np.flatnonzero(order == token)[0]))
    assert set(ranks) == {0, 1}


def test_sampling_is_reproducible():
    first, again = sample_top2(jax.random.key(0)), sample_top2(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(sample_top2(jax.random.key(1))))


FIXED_LOGITS = np.array([0.5, -1.0, 1.0, 0.2, -0.4])


def filtered_distribution(temperature: float, top_k: int, top_p: float) -> np.ndarray:
    probs = np.exp(FIXED_LOGITS / temperature)
    probs /= probs.sum()
    if top_k:
        probs[np.argsort(-probs)[top_k:]] = 0.0
        probs /= probs.sum()
    order = np.argsort(-probs)
    mass_before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])
    probs[order[mass_before >= top_p]] = 0.0
    return probs / probs.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7), (2.0, 4, 0.8)])
def test_sample_frequencies_follow_the_filtered_distribution(temperature, top_k, top_p):
    n = 4000
    logits = jnp.asarray(FIXED_LOGITS, jnp.float32)
    step = lambda tokens, state: (jnp.tile(logits, (tokens.shape[0], 1)), state)
    out = jax.jit(lambda rng: decode.sample(
        step, {"step": jnp.int32(0)}, rng, batch_size=n, max_len=2, bos_id=BOS, eos_id=EOS,
        temperature=temperature, top_k=top_k, top_p=top_p))(jax.random.key(42))
    freq = np.bincount(np.asarray(out)[:, 0], minlength=V) / n
    expected = filtered_distribution(temperature, top_k, top_p)
    assert ((expected == 0) == (freq == 0)).all(), (freq, expected)
    sigma = np.sqrt(expected * (1 - expected) / n)
    np.testing.assert_array_less(np.abs(freq - expected), 4 * sigma + 1e-3)


@pytest.mark.parametrize("options", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0),
                                     dict(top_p=1.5)])
def test_sample_rejects_bad_options(options):
    with pytest.raises(ValueError):
        decode.sample(TOY.step, TOY.init_state(1), jax.random.key(0), batch_size=1, max_len=2,
                      bos_id=BOS, eos_id=EOS, **options)


def test_min_len_forbids_early_eos_in_every_search():
    """The model of the test above prefers the empty output at first; with min_len=1 each
    search must emit a token first, and a limit of 1 still allows EOS alone."""
    first = jnp.log(jnp.array([1e-9, 1e-9, 0.6, 0.4, 1e-9]))
    middle = 20.0 * jax.nn.one_hot(EOS, V)

    def step(tokens, state):
        logits = jnp.where(state["step"] == 0, first, middle)
        return jnp.tile(logits, (tokens.shape[0], 1)), {"step": state["step"] + 1}

    kwargs = dict(batch_size=2, max_len=6, bos_id=BOS, eos_id=EOS, max_lens=jnp.array([6, 1]))
    state = {"step": jnp.int32(0)}
    outputs = {
        "greedy": lambda m: decode.greedy_search(step, state, min_len=m, **kwargs),
        "sample": lambda m: decode.sample(step, state, jax.random.key(0), temperature=1e-4,
                                          min_len=m, **kwargs),
        "beam": lambda m: decode.beam_search(step, state, beam_size=2, alpha=0.6, min_len=m,
                                             **kwargs)[0][:, 0],
    }
    for name, search in outputs.items():
        without, with_min = (np.asarray(jax.jit(search, static_argnums=0)(m)) for m in (0, 1))
        assert hypothesis(without[0], 6) == (EOS,), name
        assert hypothesis(with_min[0], 6) == (3, EOS), name
        assert hypothesis(with_min[1], 1) == (EOS,), name


def test_beam_search_finds_more_likely_translations_than_greedy(trained):
    """On the smoke run's model, beam 4 with no length penalty finds outputs at least as likely
    as greedy's for the large majority of sentences (each search keeps its own path), and
    more likely on average; each search compiles once per batch shape."""
    workdir, data_dir, _ = trained
    config = experiment_config("translate_bible", "smoke")
    config.data.data_dir, config.batch_size = str(data_dir), 8
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    task = TranslationTask(config, str(workdir), mesh)
    params = restore.restore_params(task, config, str(workdir), mesh).params
    sources = task.encoded("validation")[0][:48]
    width = max(map(len, sources))
    inputs = jnp.asarray([np.pad(s, (0, width - len(s))) for s in sources])

    def logprob(outputs):
        length = max(map(len, outputs))
        targets = jnp.asarray([np.pad(o, (0, length - len(o))) for o in outputs])
        logits = task.model.apply({"params": params}, inputs, targets)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return np.asarray(jnp.sum(picked * (targets > 0), axis=1))

    lowered = []

    def count(event, seconds, fun_name=None, **_):
        lowered.append(event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and fun_name == "jit(translate)")

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        greedy, beam = (logprob(task.search(params, sources, beam_size, 0.0)) for beam_size in (1, 4))
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert np.mean(beam >= greedy - 1e-4) >= 0.9 and beam.mean() > greedy.mean()
    # Each search compiled once per batch shape (ahead of its batches), not once per batch.
    batches = list(pipeline.eval_batches(sources, sources, batch_size=task.eval_batch_size))
    shapes = {batch["inputs"].shape for batch in batches}
    assert 1 < len(shapes) < len(batches) and sum(lowered) == 2 * len(shapes)
