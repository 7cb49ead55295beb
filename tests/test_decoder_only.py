"""The decoder-only model, its cached sampling with guidance, bits per character, the
captioned digits, and the two decoder-only experiments run through `launch.py`."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_devices, launch, run_benchmark
from PIL import Image

from ml_transformer import decode
from ml_transformer.data import digit_captions as dc
from ml_transformer.models.decoder_only import DecoderOnly, DecoderOnlyConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.tasks.generation import left_padded, sample_tokens
from ml_transformer.tasks.language_model import bits_per_character, lm_batch, next_token_loss

VOCAB = 13


def tiny_lm(position: str):
    """(model, params) of a tiny random decoder-only model."""
    block = BlockConfig(d_model=16, num_heads=2, d_ff=32, dropout_rate=0.0, pre_ln=True)
    model = DecoderOnly(DecoderOnlyConfig(vocab_size=VOCAB, block=block, num_layers=2, max_len=24, position=position))
    return model, model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("learned")


@pytest.fixture(scope="module", params=["learned", "sinusoidal"])
def any_lm(request):
    return tiny_lm(request.param)


def forward(lm):
    """The jitted full forward pass of a (model, params)."""
    model, params = lm
    return jax.jit(lambda tokens: model.apply({"params": params}, tokens))


def test_changing_later_tokens_changes_no_earlier_logit(lm):
    tokens = jax.random.randint(jax.random.key(1), (3, 10), 1, VOCAB)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % (VOCAB - 1) + 1)
    a, b = (forward(lm)(t) for t in (tokens, changed))
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_padding_on_either_side_changes_no_logit_of_real_tokens(any_lm):
    row = np.array([[2, 5, 7, 4, 9]])
    run = forward(any_lm)
    alone = run(row)[0]
    np.testing.assert_allclose(run(np.pad(row, ((0, 0), (3, 0))))[0, 3:], alone, atol=1e-5)
    np.testing.assert_allclose(run(np.pad(row, ((0, 0), (0, 4))))[0, :5], alone, atol=1e-5)


def test_cached_steps_equal_the_full_forward_pass_with_left_padded_prompts_of_different_lengths(any_lm):
    model, params = any_lm
    variables = {"params": params}
    rows = np.array([[2, 5, 7, 4, 9, 3, 8, 6], [2, 11, 6, 1, 8, 12, 5, 10]])
    prompt_lengths = (2, 5)
    prompts = left_padded([r[:n] for r, n in zip(rows, prompt_lengths)], 2, width=6)
    context, last = prompts[:, :-1], prompts[:, -1:]
    cache, memory = model.apply(variables, context, context.shape[1] + 6, method=DecoderOnly.prefill)
    step = jax.jit(functools.partial(model.apply, variables, method=DecoderOnly.decode_step))
    full = forward(any_lm)(rows)  # causal: position t's logits see the first t + 1 tokens only
    tokens = jnp.asarray(last)
    for k in range(3):
        logits, cache, memory = step(tokens, cache, memory)
        for b, n in enumerate(prompt_lengths):
            np.testing.assert_allclose(logits[b], full[b, n + k - 1], atol=1e-5)
        tokens = jnp.array([[row[n + k]] for row, n in zip(rows, prompt_lengths)])


def test_an_empty_context_prefills_nothing(lm):
    model, params = lm
    cache, memory = model.apply({"params": params}, jnp.zeros((2, 0), jnp.int32), 4, method=DecoderOnly.prefill)
    logits, _, _ = model.apply({"params": params}, jnp.array([[2], [2]]), cache, memory, method=DecoderOnly.decode_step)
    np.testing.assert_allclose(logits[0], forward(lm)(jnp.array([[2]]))[0, 0], atol=1e-5)


@functools.cache
def jitted_sampler(model):
    return jax.jit(functools.partial(sample_tokens, model),
                   static_argnames=("max_new_tokens", "eos_id", "temperature", "top_k", "top_p", "cached"))


def sample(lm, prompts, keys=None, **kwargs):
    model, params = lm
    settings = dict(max_new_tokens=6, eos_id=3, temperature=1.0)
    keys = jax.random.key(7) if keys is None else keys
    return np.asarray(jitted_sampler(model)(params, jnp.asarray(prompts), keys, **{**settings, **kwargs}))


def test_greedy_top_k_one_and_uncached_sampling_agree_and_seeds_repeat(lm):
    prompts = left_padded([np.array([2, 5, 7]), np.array([2, 9])], 2)
    greedy = sample(lm, prompts, temperature=0.0)
    np.testing.assert_array_equal(sample(lm, prompts, top_k=1), greedy)
    np.testing.assert_array_equal(sample(lm, prompts, temperature=0.0, cached=False), greedy)
    np.testing.assert_array_equal(sample(lm, prompts), sample(lm, prompts))
    np.testing.assert_array_equal(sample(lm, prompts, cached=False), sample(lm, prompts))
    # The greedy tokens are the argmax of the full forward pass over the prompt and what follows.
    model, params = lm
    sequence = np.concatenate([[2, 5, 7], greedy[0][greedy[0] > 0]])
    logits = model.apply({"params": params}, sequence[None])[0]
    np.testing.assert_array_equal(np.argmax(logits[2:-2], axis=-1), sequence[3:-1])  # the last may be a forced EOS


def test_a_row_samples_the_same_in_any_batch(lm):
    from ml_transformer.tasks.generation import row_keys

    prompts = left_padded([np.array([2, 5, 7]), np.array([2, 9]), np.array([2, 4, 4, 6])], 3)
    together = sample(lm, prompts, row_keys(0, 0, 3))
    np.testing.assert_array_equal(sample(lm, prompts[1:], row_keys(0, 1, 2)), together[1:])


def test_guidance_scale_one_is_conditional_sampling_and_zero_the_unconditional_model(lm):
    prompts = left_padded([np.array([2, 5, 7, 11]), np.array([2, 9, 4, 11])], 2)  # 11 ends a caption
    empty = left_padded([np.array([2, 11])] * 2, 2, width=prompts.shape[1])
    one = sample(lm, prompts, unconditional=jnp.asarray(empty), guidance_scale=1.0)
    np.testing.assert_array_equal(one, sample(lm, prompts))
    zero = sample(lm, prompts, unconditional=jnp.asarray(empty), guidance_scale=0.0, temperature=0.0)
    np.testing.assert_array_equal(zero, sample(lm, empty, temperature=0.0))
    allowed = np.arange(VOCAB) >= 10
    restricted = sample(lm, prompts, allowed=allowed, max_new_tokens=4)
    assert np.all(restricted[:, :3] >= 10) and np.all(restricted[:, 3] == 3)  # EOS forced at the limit


@pytest.mark.parametrize("top_p, kept", [(0.45, {1}), (0.7, {1, 3}), (0.8, {1, 3, 4}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_exactly_the_smallest_set_reaching_p(top_p, kept):
    logits = jnp.log(jnp.array([0.0625, 0.5, 0.0625, 0.25, 0.125]))
    select = jax.jit(decode._sampler(temperature=1.0, top_k=0, top_p=top_p))
    drawn = select(jnp.tile(logits, (400, 1)), jax.random.split(jax.random.key(0), 400))
    assert set(np.asarray(drawn).tolist()) == kept


def test_bits_per_character_is_the_summed_nll_in_bits_over_the_characters():
    # Two verses "ab" and "c" (3 + 2 characters with their ends) as the tokens [a, b, EOS] and [c, EOS]
    # of a model giving each token the probability below.
    probabilities = {"a": 0.5, "b": 0.25, "EOS1": 0.5, "c": 0.125, "EOS2": 1.0}
    nll = -sum(math.log(p) for p in probabilities.values())
    assert bits_per_character(nll, characters=5) == pytest.approx((1 + 2 + 1 + 3 + 0) / 5)
    ids = {"a": 4, "b": 5, "c": 6, "EOS": 3}
    batch = lm_batch({"targets": np.array([[4, 5, 3], [6, 3, 0]]), "index": np.array([0, 1])}, 2,
                     characters=np.array([3.0, 2.0]))
    np.testing.assert_array_equal(batch["inputs"], [[2, 4, 5], [2, 6, 0]])
    # A "model" whose logits are those log-probabilities at each position gives the same sum.
    logits = np.full((2, 3, 8), -1e9, np.float32)
    for (row, col), (name, p) in zip([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], probabilities.items()):
        logits[row, col, ids[name.rstrip("12")]] = math.log(p)
        logits[row, col, 7] = math.log(1 - p) if p < 1 else -1e9

    class Fixed:
        def apply(self, variables, inputs, train, rngs):
            return jnp.asarray(logits)

    _, sums = next_token_loss(Fixed(), 0.0, None, {k: jnp.asarray(v) for k, v in batch.items()}, None, False)
    assert bits_per_character(float(sums["nll_sum"]), float(sums["characters"])) == pytest.approx(1.4, rel=1e-6)


def test_pixel_tokens_round_trip_and_captions_name_the_digit():
    from ml_transformer.data import digits

    images, labels = digits.load()
    tokens = np.stack([dc.pixel_tokens(image) for image in images[:50]])
    assert tokens.min() >= dc.PIXEL_OFFSET and tokens.max() < dc.VOCAB_SIZE
    np.testing.assert_array_equal(np.stack([dc.image_from_tokens(t) for t in tokens]), images[:50])
    ids = dc.caption_ids("A handwritten SEVEN")
    assert [dc.token_name(i) for i in ids] == ["<s>", "a", "handwritten", "seven", "<sep>"]
    sequence = dc.sequence(ids, tokens[0])
    assert len(sequence) == dc.SEQUENCE_LENGTH and list(sequence[:5]) == [0] * 5
    with pytest.raises(ValueError, match="unknown word 'cat'"):
        dc.caption_ids("a cat")


def test_training_batches_drop_captions_at_the_configured_rate_and_score_only_pixels(tfds_dir):
    data = dc.captioned_digits(str(tfds_dir), caption_dropout=0.25)
    batch = data.train_batches(seed=0, batch_size=64, batch_multiple=1)[3]
    inputs, labels = batch["inputs"], batch["labels"]
    assert inputs.shape == labels.shape == (64, dc.SEQUENCE_LENGTH - 1)
    assert np.all(labels[:, : -dc.IMAGE_TOKENS] == 0) and np.all(labels[:, -dc.IMAGE_TOKENS:] >= dc.PIXEL_OFFSET)
    empty = np.sum(inputs[:, dc.MAX_CAPTION_WORDS - 1] == 0)  # only BOS, SEP in the caption region
    assert 5 <= empty <= 30


def lm_args(workdir, data_dir, *more):
    return ["--config=experiments/lm_bible.py:smoke", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.total_steps=4", "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4",
            "--config.decode.max_new_tokens=8", "--config.data.max_len=32", "--config.data.batch_tokens=512", *more]


def test_language_model_modes_and_eight_devices_train_as_one(tmp_path, tfds_dir):
    workdir = tmp_path / "one"
    result = launch(*lm_args(workdir, tfds_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    test = json.loads((workdir / "eval" / "test-4.json").read_text())
    assert test["characters"] == 199819 and 0 < test["bits_per_char"] < 12
    assert test["bits_per_char"] == pytest.approx(test["nll"] * test["tokens"] / math.log(2) / test["characters"])
    assert (workdir / "eval" / "test-4.tsv").read_text().startswith("prompt\tcontinuation\nIn the beginning\t")

    eight = tmp_path / "eight"
    result = launch(*lm_args(eight, tfds_dir), env=cpu_devices(8))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (workdir, eight)]
    for one, other in zip(*records):
        for key in one.keys() - {"train/tokens_per_second", "train/mfu"}:
            assert other[key] == pytest.approx(one[key], rel=1e-5), key
    assert (eight / "eval" / "test-4.tsv").read_text() == (workdir / "eval" / "test-4.tsv").read_text()

    result = launch(*lm_args(workdir, tfds_dir), "--mode=predict", "--config.decode.num_samples=2",
                    stdin="In the beginning\n\n" + "word " * 300 + "\n")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == "" and lines[0].count("\t") == 1
    assert "input line 3: " in result.stderr and "more than the 248 a prompt may have" in result.stderr
    result = launch(*lm_args(workdir, tfds_dir), "--mode=attention", stdin="And Jesus said\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.basename(result.stdout.split()[0]) == "0-layers_0-self_attention-head-mean.png"


def test_text_to_image_modes(tmp_path, tfds_dir):
    workdir = tmp_path / "run"
    args = ["--config=experiments/dalle_digits.py:smoke", f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}",
            "--config.total_steps=4", "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    test = json.loads((workdir / "eval" / "test-4.json").read_text())
    assert test["tokens"] == 270 * 64 and test["perplexity"] > 1
    with Image.open(workdir / "samples" / "step4-digits.png") as grid:
        assert grid.size == (2 + 2 * 66, 2 + 10 * 66)  # 10 digits x 2 samples of 8x8 pixels zoomed 8x

    result = launch(*args, "--mode=predict", stdin="a handwritten seven\n\nthe digit 3\n")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")[:-1]
    assert lines[1] == "" and [os.path.basename(line) for line in (lines[0], lines[2])] == ["line1.png", "line3.png"]
    result = launch(*args, "--mode=predict", stdin="the digit 3\na purple cat\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: input line 2: caption 'a purple cat': unknown word 'purple'")
    result = launch(*args, "--mode=attention", stdin="the digit 3\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.basename(result.stdout.split()[0]) == "0-layers_0-self_attention-head-mean.png"

    result = run_benchmark("dalle_digits.py", *args[:1], *args[2:], f"--workdir={workdir}", "--samples=2",
                           "--scales=1,3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 4; SVC on real test images: accuracy ")
    assert [line.split(":")[0] for line in lines[1:]] == ["guidance scale 1", "guidance scale 3"]
