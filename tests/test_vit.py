"""The Vision Transformer: patch embedding, class token, pooling, variants, attention
weights, position embeddings at another resolution, and a tiny digits run through
`launch.py` in every mode."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import (assert_predictions_in_order, distinct_predictions, experiment_config, launch,
                      single_example_predictions)
from PIL import Image
from sklearn.datasets import load_digits

from ml_transformer import attention_maps, sharding
from ml_transformer.models import vit
from ml_transformer.nn.embeddings import PatchEmbedding
from ml_transformer.tasks.classification import ClassificationTask
from ml_transformer.train import restore
from ml_transformer.train.state import build_state


def tiny_vit(**kwargs):
    fields = dict(num_classes=5, patch_size=2, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    return vit.ViT(**{**fields, **kwargs})


def random_head(params, seed=0):
    """Parameters with a random head (the head starts at zero, hiding what feeds it)."""
    kernel = params["head"]["kernel"]
    head = {"kernel": jax.random.normal(jax.random.key(seed), kernel.shape), "bias": params["head"]["bias"]}
    return {**params, "head": head}


# --- patch embedding ---------------------------------------------------------------------


def test_patch_embedding_with_identity_projection_returns_the_pixels_patch_by_patch():
    p, (h, w, c) = 2, (6, 4, 3)
    images = jax.random.uniform(jax.random.key(0), (2, h, w, c))
    module = PatchEmbedding(patch_size=p, features=p * p * c)
    params = {"projection": {"kernel": jnp.eye(p * p * c), "bias": jnp.zeros(p * p * c)}}
    out = module.apply({"params": params}, images)
    assert out.shape == (2, (h // p) * (w // p), p * p * c)
    # Patch k = (row k // (w/p), column k % (w/p)); its pixels in (row, column, channel) order.
    rebuilt = out.reshape(2, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(images.shape)
    np.testing.assert_array_equal(rebuilt, images)


def test_patch_embedding_is_linear_per_patch_and_each_pixel_feeds_one_patch():
    p, (h, w, c), d = 2, (4, 6, 2), 5
    module = PatchEmbedding(patch_size=p, features=d)
    image = jax.random.normal(jax.random.key(1), (1, h, w, c))
    params = module.init(jax.random.key(2), image)["params"]
    kernel, bias = params["projection"]["kernel"], params["projection"]["bias"]
    patches = np.asarray(image).reshape(1, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(1, -1, p * p * c)
    np.testing.assert_allclose(module.apply({"params": params}, image), patches @ kernel + bias, rtol=1e-5, atol=1e-5)

    jacobian = jax.jacobian(lambda x: module.apply({"params": params}, x[None])[0])(image[0])  # [N, d, h, w, c]
    feeds = np.abs(np.asarray(jacobian)).sum(axis=1) > 0  # [N, h, w, c]: patch n sees pixel (i, j, ch)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    expected_patch = (rows // p) * (w // p) + cols // p
    for ch in range(c):
        assert (feeds[..., ch].sum(axis=0) == 1).all()
        np.testing.assert_array_equal(feeds[..., ch].argmax(axis=0), expected_patch)


def test_patch_embedding_rejects_sizes_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match=r"7x8 .* patch size 2"):
        PatchEmbedding(patch_size=2, features=4).init(jax.random.key(0), jnp.zeros((1, 7, 8, 1)))


# --- the model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(3), (3, 8, 8, 1), minval=-1, maxval=1)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_logits_are_the_head_on_the_class_token_or_the_mean_patch_token(images, pool):
    model = tiny_vit(pool=pool)
    params = random_head(model.init(jax.random.key(0), images)["params"])
    logits, state = model.apply({"params": params}, images, capture_intermediates=True)
    assert logits.shape == (3, 5) and logits.dtype == jnp.float32
    encoded = state["intermediates"]["encoder"]["__call__"][0]  # [B, 1 + 16, d]
    assert encoded.shape == (3, 17, 16)
    pooled = encoded[:, 0] if pool == "token" else encoded[:, 1:].mean(axis=1)
    np.testing.assert_allclose(logits, pooled @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-5, atol=1e-5)


def test_the_head_starts_at_zero(images):
    model = tiny_vit()
    logits = model.apply(model.init(jax.random.key(0), images), images)
    np.testing.assert_array_equal(logits, 0.0)


def test_class_token_output_changes_with_every_single_patch(images):
    model = tiny_vit()
    params = random_head(model.init(jax.random.key(0), images)["params"])
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    base = apply(images)
    for k in range(16):  # a 4x4 grid of 2x2 patches
        r, c = divmod(k, 4)
        changed = images.at[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].add(0.5)
        assert np.all(np.abs(np.asarray(apply(changed) - base)).max(axis=1) > 1e-6), f"patch {k} is not seen"


def test_dropout_only_in_training(images):
    model = tiny_vit(dropout_rate=0.5)
    params = random_head(model.init(jax.random.key(0), images)["params"])
    np.testing.assert_array_equal(model.apply({"params": params}, images),
                                  model.apply({"params": params}, images))
    a, b = (model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(s)}) for s in (1, 2))
    assert not np.allclose(a, b)


def test_declared_image_size_rejects_other_inputs(images):
    with pytest.raises(ValueError, match=r"16x16 images got 8x8"):
        tiny_vit(image_size=16).init(jax.random.key(0), images)


def model_config(**fields):
    base = dict(name="vit", variant="", patch_size=0, d_model=0, num_layers=0, num_heads=0, d_ff=0,
                dropout_rate=0.0, attention_dropout_rate=0.0, pool="token", dtype="float32", attention_impl="",
                image_size=0)
    return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("name, sizes", [
    ("Ti/16", (16, 192, 12, 3, 768)),
    ("S/16", (16, 384, 12, 6, 1536)),
    ("B/16", (16, 768, 12, 12, 3072)),
    ("L/16", (16, 1024, 24, 16, 4096)),
])
def test_variants_have_the_papers_sizes(name, sizes):
    model = vit.from_config(model_config(variant=name), num_classes=10)
    assert (model.patch_size, model.d_model, model.num_layers, model.num_heads, model.d_ff) == sizes


def test_variant_fields_are_overridden_by_nonzero_config_fields():
    model = vit.from_config(model_config(variant="B/16", patch_size=32, num_layers=6), num_classes=10)
    assert (model.patch_size, model.d_model, model.num_layers) == (32, 768, 6)
    custom = vit.from_config(model_config(patch_size=2, d_model=8, num_layers=1, num_heads=2, d_ff=16), 3)
    assert (custom.patch_size, custom.d_model, custom.num_classes) == (2, 8, 3)
    with pytest.raises(ValueError, match="unknown ViT variant 'H/14'"):
        vit.from_config(model_config(variant="H/14"), 10)
    with pytest.raises(ValueError, match="d_model"):
        vit.from_config(model_config(patch_size=2, num_layers=1, num_heads=2, d_ff=16), 3)


def test_vit_b16_has_the_reference_parameter_count():
    model = vit.from_config(model_config(variant="B/16"), num_classes=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    assert shapes[vit.POSITION_EMBEDDING].shape == (1, 197, 768)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 86_567_656


# --- position embeddings at another resolution ------------------------------------------


def test_resize_position_embeddings_keeps_the_class_token():
    posemb = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
    np.testing.assert_array_equal(vit.resize_position_embeddings(posemb, (4, 4)), posemb)
    resized = vit.resize_position_embeddings(posemb, (6, 3))
    assert resized.shape == (1, 1 + 18, 8)
    np.testing.assert_array_equal(resized[:, 0], posemb[:, 0])
    constant = jnp.concatenate([posemb[:, :1], jnp.full((1, 16, 8), 0.3)], axis=1)
    np.testing.assert_allclose(vit.resize_position_embeddings(constant, (7, 7))[:, 1:], 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="not a square grid"):
        vit.resize_position_embeddings(posemb[:, :13], (4, 4))


def test_adapt_restored_params_resizes_position_embeddings_only():
    small, large = tiny_vit(), tiny_vit()
    restored = small.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    target = large.init(jax.random.key(1), jnp.zeros((1, 12, 12, 1)))["params"]
    adapted = vit.adapt_restored_params(restored, target)
    assert jax.tree.map(jnp.shape, adapted) == jax.tree.map(jnp.shape, target)
    posemb = adapted[vit.POSITION_EMBEDDING]
    np.testing.assert_array_equal(posemb[:, 0], restored[vit.POSITION_EMBEDDING][:, 0])
    np.testing.assert_allclose(posemb, vit.resize_position_embeddings(restored[vit.POSITION_EMBEDDING], (6, 6)))
    for path, value in jax.tree_util.tree_leaves_with_path(adapted):
        if path[-1].key != vit.POSITION_EMBEDDING:
            np.testing.assert_array_equal(value, _at(restored, path))
    assert large.apply({"params": adapted}, jnp.zeros((1, 12, 12, 1))).shape == (1, 5)

    wider = tiny_vit(d_ff=48).init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))["params"]
    with pytest.raises(ValueError, match=r"encoder/layers_0/feed_forward/Dense_0/bias.*\(32,\).*\(48,\)"):
        vit.adapt_restored_params(restored, wider)
    other_classes = tiny_vit(num_classes=7).init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))["params"]
    with pytest.raises(ValueError, match=r"head/bias.*\(5,\).*\(7,\)"):
        vit.adapt_restored_params(restored, other_classes)


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


# --- a digits run through the trainer ----------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tfds_dir):
    """A 30-step smoke run of experiments/vit_digits.py (enough for its answers to differ
    from image to image): (workdir, launch arguments)."""
    workdir = tmp_path_factory.mktemp("run")
    args = ["--config=experiments/vit_digits.py:smoke", f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}",
            "--config.total_steps=30", "--config.eval_every_steps=15", "--config.checkpoint_every_steps=15"]
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test @ step 30" in result.stdout
    return workdir, args


def test_vit_digits_smoke_in_train_eval_predict_and_attention_modes(digits_run, tmp_path):
    workdir, args = digits_run
    result = launch(*args, "--mode=eval", "--checkpoint=15", "--split=validation")
    assert result.returncode == 0, result.stderr[-3000:]
    for split, step, count in (("test", 30, 270), ("validation", 15, 269)):
        metrics = json.loads((workdir / "eval" / f"{split}-{step}.json").read_text())
        assert metrics["examples"] == count and 0.0 <= metrics["accuracy"] <= 1.0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r for r in records) and any("train/loss" in r for r in records)

    blank = tmp_path / "blank.npy"
    np.save(blank, np.zeros((8, 8), np.uint8))
    pool = [str(blank)]
    for n, image in enumerate(load_digits().images[:40]):
        pool.append(str(tmp_path / f"digit{n}.npy"))
        np.save(pool[-1], (image * 16).clip(0, 255).astype(np.uint8))
    paths, expected = distinct_predictions(pool, single_example_predictions(
        experiment_config("vit_digits", "smoke"), args, pool))
    assert len(paths) >= 5
    result = launch(*args, "--mode=predict", stdin="\n".join([*paths, str(blank)]) + "\n")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths) + 1 and lines[0] == lines[-1]
    assert_predictions_in_order(lines[:-1], expected)

    result = launch(*args, "--mode=attention", stdin=f"{blank}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = result.stdout.split()
    assert os.path.basename(path) == "0-encoder-layers_0-self_attention-head-mean-class-token.png"
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_attention_weights_for_pictures_come_from_the_forward_pass(images):
    model = tiny_vit(num_layers=2)
    params = random_head(model.init(jax.random.key(0), images)["params"])
    logits, state = model.apply({"params": params}, images, mutable=["intermediates"])
    np.testing.assert_allclose(logits, model.apply({"params": params}, images), atol=1e-5)  # = fast path
    weights = attention_maps.collect(state["intermediates"])
    assert sorted(weights) == ["encoder/layers_0/self_attention", "encoder/layers_1/self_attention"]
    tokens = 1 + (images.shape[1] // 2) ** 2
    for w in weights.values():
        assert w.shape == (images.shape[0], 2, tokens, tokens)
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)


def test_a_checkpoint_restores_at_another_resolution(digits_run):
    """The smoke model trained on 8x8 digits, restored for 12x12 images: its position
    embeddings are interpolated, every other parameter is as saved."""
    workdir, _ = digits_run
    config = experiment_config("vit_digits", "smoke")
    config.model.image_size = 12
    model = vit.from_config(config.model, 10)

    class Larger:  # a task whose images are 12x12
        resize_param = staticmethod(vit.resize_restored)

        def init_params(self, rng):
            return model.init(rng, jnp.zeros((1, 12, 12, 1)))["params"]

    mesh = sharding.make_mesh()
    step, params, _ = restore.restore_params(Larger(), config, str(workdir), mesh)
    assert step == 30
    posemb = params[vit.POSITION_EMBEDDING]
    assert posemb.shape == (1, 1 + 36, config.model.d_model)
    assert model.apply({"params": params}, jnp.zeros((2, 12, 12, 1))).shape == (2, 10)

    class Wider(Larger):  # a model whose shapes differ elsewhere: no resize fits
        def init_params(self, rng):
            return vit.ViT(10, 2, config.model.d_model, 1, 2, 2 * config.model.d_ff).init(
                rng, jnp.zeros((1, 8, 8, 1)))["params"]

    with pytest.raises(ValueError, match=r"feed_forward.*checkpoint shape \(\d+,\), model shape"):
        restore.restore_params(Wider(), config, str(workdir), mesh)


@pytest.mark.parametrize("name", ["vit_mnist", "vit_cifar10", "vit_imagenet"])
def test_catalog_experiments_build_data_model_and_optimizer_on_mock_data(name):
    mesh = sharding.make_mesh()
    for arg in (None, "smoke"):
        config = experiment_config(name, arg)
        with tfds.testing.mock_data(num_examples=40):
            task = ClassificationTask(config, "unused", mesh)
            batch = task.train_batches()[0] if arg == "smoke" else None
        _, _, abstract, _ = build_state(task, config, mesh)
        shape = task.data.input_spec[0]
        logits = jax.eval_shape(lambda p, x: task.model.apply({"params": p}, x), abstract.params,
                                jax.ShapeDtypeStruct((2, *shape), jnp.float32))
        assert logits.shape == (2, task.data.num_classes)
        if batch is not None:
            assert batch["inputs"].shape == (config.batch_size, *shape)
