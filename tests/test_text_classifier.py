"""The text classifier: heads, max pooling that ignores padding, sensitivity to every
token, and a tiny textcls_bible run through the trainer's train, eval and predict modes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_predictions_in_order, experiment_config, launch, single_example_predictions
from PIL import Image

from ml_transformer.models.text_classifier import (
    TextClassifier, TextClassifierConfig, masked_max_pool)
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.tasks.classification import classification_metrics, probabilities

VOCAB, MAX_LEN = 50, 16


def classifier(head="sigmoid", num_classes=2, pre_ln=False):
    block = BlockConfig(d_model=16, num_heads=2, d_ff=16, dropout_rate=0.1, pre_ln=pre_ln)
    return TextClassifier(TextClassifierConfig(VOCAB, num_classes, block, num_layers=1, max_len=MAX_LEN, head=head))


def tokens(lengths, width=10, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        out[row, :n] = rng.integers(1, VOCAB, n)
    return jnp.asarray(out)


@pytest.fixture(scope="module")
def sigmoid_model():
    model = classifier()
    return model, model.init(jax.random.key(0), tokens([3]))


def test_heads_give_logits_and_probabilities():
    model = classifier()
    x = tokens([3, 7, 10])
    logits = model.apply(model.init(jax.random.key(0), x), x)
    assert logits.shape == (3, 1)
    p = jax.nn.sigmoid(logits)
    assert bool(jnp.all((p > 0) & (p < 1)))
    np.testing.assert_allclose(probabilities(logits)[:, 1], p[:, 0], rtol=1e-6)

    model = classifier("softmax", 3, pre_ln=True)
    logits = model.apply(model.init(jax.random.key(0), x), x)
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(jnp.sum(probabilities(logits), axis=-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="sigmoid head needs 2 classes"):
        classifier("sigmoid", 3)


def test_classification_loss_smooths_labels_and_skips_invalid_rows():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(4, 5)), np.array([0, 3, 4, 1])
    valid = np.array([True, True, False, True])
    sums = classification_metrics(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid), 0.1)
    target = np.full((4, 5), 0.1 / 5) + 0.9 * np.eye(5)[labels]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(sums["loss_sum"]) == pytest.approx(-(target * log_p).sum(-1)[valid].sum(), rel=1e-5)
    assert float(sums["correct"]) == ((logits.argmax(-1) == labels) & valid).sum()
    assert float(sums["examples"]) == 3
    # A one-logit sigmoid head: binary cross-entropy against the smoothed probability of class 1.
    logit, label = np.array([[1.5], [-0.5]]), np.array([1, 0])
    sums = classification_metrics(jnp.asarray(logit), jnp.asarray(label), jnp.ones(2, bool), 0.2)
    p, y = 1 / (1 + np.exp(-logit[:, 0])), np.where(label == 1, 0.9, 0.1)
    assert float(sums["loss_sum"]) == pytest.approx(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(), rel=1e-5)
    assert float(sums["correct"]) == 2


def test_max_pool_never_picks_padding():
    x = jnp.array([[[-5.0, -1.0], [-2.0, -3.0], [100.0, 100.0]],
                   [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]])
    valid = jnp.array([[True, True, False], [False, False, False]])
    np.testing.assert_array_equal(masked_max_pool(x, valid), [[-2.0, -1.0], [0.0, 0.0]])


def test_output_ignores_padding_length_and_pad_embeddings(sigmoid_model):
    model, variables = sigmoid_model
    x = tokens([2, 5, 10])
    base = model.apply(variables, x)
    longer = jnp.pad(x, ((0, 0), (0, MAX_LEN - x.shape[1])))
    np.testing.assert_allclose(model.apply(variables, longer), base, rtol=1e-5, atol=1e-6)

    params = jax.tree.map(lambda a: a, variables["params"])
    params["embed"]["embedding"] = params["embed"]["embedding"].at[0].set(50.0)
    params["position"]["embedding"] = params["position"]["embedding"].at[5:].add(30.0)  # Pads of rows 0 and 1.
    changed = model.apply({"params": params}, x)
    np.testing.assert_allclose(changed[:2], base[:2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[2], base[2])  # Its positions 5.. are real tokens.


def test_every_real_token_can_change_the_output(sigmoid_model):
    model, variables = sigmoid_model
    x = tokens([8], width=MAX_LEN)
    base = model.apply(variables, x)
    for i in range(8):
        changed = model.apply(variables, x.at[0, i].set(x[0, i] % (VOCAB - 1) + 1))
        assert not np.allclose(changed, base, rtol=1e-6, atol=1e-7), f"position {i} ignored"


def test_dropout_only_in_training_and_inputs_longer_than_max_len_rejected(sigmoid_model):
    model, variables = sigmoid_model
    x = tokens([4, 9])
    train = lambda seed: model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})  # noqa: E731
    assert not np.allclose(train(1), train(2))
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    with pytest.raises(ValueError, match="max_len=16"):
        model.apply(variables, tokens([3], width=MAX_LEN + 1))


def test_smoke_run_in_train_eval_predict_and_attention_modes(tmp_path, tfds_dir):
    workdir = tmp_path / "run"
    args = ["--config=experiments/textcls_bible.py:smoke", f"--workdir={workdir}",
            f"--config.data.data_dir={tfds_dir}", "--config.total_steps=4",
            "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    test = json.loads((workdir / "eval" / "test-4.json").read_text())
    assert test["step"] == 4 and 0 <= test["accuracy"] <= 1 and test["examples"] == 1500

    result = launch(*args, "--mode=eval", "--split=validation")
    assert result.returncode == 0, result.stderr[-3000:]
    validation = json.loads((workdir / "eval" / "validation-4.json").read_text())
    assert 0 <= validation["accuracy"] <= 1 and validation["examples"] == 1537

    verses = ["Jesus wept.", "In the beginning God created the heavens and the earth.", "",
              "Then Peter said, Lord, to whom shall we go?", "And the LORD spoke to Moses, saying,"]
    result = launch(*args, "--mode=predict", stdin="\n".join(verses) + "\n")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 5 and lines[2] == ""  # an empty line is answered with an empty line
    expected = single_example_predictions(experiment_config("textcls_bible", "smoke"), args, [v for v in verses if v])
    assert_predictions_in_order([line for line in lines if line], expected)

    result = launch(*args, "--mode=attention", "--head=0", stdin="Jesus wept.\n")
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = result.stdout.split()
    assert os.path.basename(path) == "0-encoder-layers_0-self_attention-head-0.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
