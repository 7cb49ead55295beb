"""Classification of images (the Vision Transformer) and texts (the text classifier).

The data and the model are chosen by name (`config.data.name`, `config.model.name`) from
the registries below; each entry is `module:function`, imported on first use.

A dataset factory `make(config, workdir) -> ClassificationData` returns an object with:
  num_classes: int;  label_names: list[str]
  input_spec: (shape without batch, numpy dtype) of the model inputs
  train_batches(*, seed, batch_size, batch_multiple) -> grain.MapDataset, infinite, item
      `step` = {'inputs': [B, ...], 'labels': int32 [B] or float32 [B, C] (soft labels,
      e.g. mixup)}, augmentation included, a function of (seed, step) only
  eval_batches(split, *, batch_size, batch_multiple) -> iterable of {'inputs', 'labels'
      int32 [B], 'valid' bool [B]}, every example of the split once, in order, B a
      multiple of batch_multiple (padding rows have valid=False)
  Batches hold this process's rows (`sharding.process_rows`) of the global batch.
  encode(raw: list) -> inputs [N, ...]: raw texts (or image files) → model inputs, for
      predict and attention
  tokenizer (text datasets only): shows the tokens on attention pictures
A model factory `from_config(model_config, num_classes) -> flax module` whose
`apply(variables, inputs, train=)` returns logits [B, num_classes], or [B, 1] for a
two-class sigmoid head.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_transformer import attention_maps, sharding
from ml_transformer.models import vit
from ml_transformer.registry import resolve
from ml_transformer.tasks.base import Task, summed
from ml_transformer.train.losses import summarize
from ml_transformer.train.steps import eval_step

DATASETS = {
    "digits": "ml_transformer.data.images:digits",
    "mnist": "ml_transformer.data.images:mnist",
    "cifar10": "ml_transformer.data.images:cifar10",
    "imagenet2012": "ml_transformer.data.images:imagenet2012",
    "imdb_reviews": "ml_transformer.data.texts:imdb_reviews",
    "bible_testament": "ml_transformer.data.texts:bible_testament",
}
MODELS = {
    "vit": "ml_transformer.models.vit:from_config",
    "text_classifier": "ml_transformer.models.text_classifier:from_config",
}


def classification_metrics(logits: jax.Array, labels: jax.Array, valid: jax.Array, smoothing: float) -> dict:
    """Sums over valid examples: loss, correct predictions, count ('examples').

    `labels` are class ids [B] or soft labels [B, C]. Logits [B, 1] are a sigmoid head
    for two classes (binary cross-entropy on class 1); otherwise softmax cross-entropy
    against labels smoothed by `smoothing`.
    """
    num_classes = max(logits.shape[-1], 2)
    soft = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
    hard = jnp.argmax(soft, axis=-1)
    if smoothing:
        soft = soft * (1.0 - smoothing) + smoothing / num_classes
    if logits.shape[-1] == 1:
        logit = logits[:, 0].astype(jnp.float32)
        loss = optax.sigmoid_binary_cross_entropy(logit, soft[:, 1])
        predicted = (logit > 0).astype(jnp.int32)
    else:
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft)
        predicted = jnp.argmax(logits, axis=-1)
    weights = valid.astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss * weights),
        "correct": jnp.sum((predicted == hard) * weights),
        "examples": jnp.sum(weights),
    }


def probabilities(logits: jax.Array) -> jax.Array:
    """Class probabilities [B, C]: sigmoid for a one-logit head, softmax otherwise."""
    if logits.shape[-1] == 1:
        p = jax.nn.sigmoid(logits[:, 0].astype(jnp.float32))
        return jnp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


class ClassificationTask(Task):
    """Everything the trainer and the eval/predict modes need for classification."""

    unit = "examples"

    def __init__(self, config, workdir: str, mesh):
        self.config, self.mesh = config, mesh
        self.data = resolve(DATASETS, config.data.name, "config.data.name")(config, workdir)
        self.model = resolve(MODELS, config.model.name, "config.model.name")(config.model, self.data.num_classes)
        self.batch_multiple = sharding.row_multiple(mesh, config.micro_batches)
        self.eval_batch_size = sharding.padded_rows(config.batch_size, self.batch_multiple)
        self.resize_param = vit.resize_restored if isinstance(self.model, vit.ViT) else None
        self._eval_step = jax.jit(functools.partial(eval_step, loss_fn=self.loss_fn))
        self._predict = jax.jit(lambda params, inputs: probabilities(self.model.apply({"params": params}, inputs)))

    def init_params(self, rng):
        shape, dtype = self.data.input_spec
        return self.model.init(rng, jnp.zeros((self.batch_multiple, *shape), dtype))["params"]

    def loss_fn(self, params, batch, rng, train: bool):
        rngs = {"dropout": rng} if train else {}
        logits = self.model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs)
        valid = batch.get("valid", jnp.ones(logits.shape[:1], bool))
        sums = classification_metrics(logits, batch["labels"], valid, self.config.optimizer.label_smoothing)
        return sums["loss_sum"] / jnp.maximum(sums["examples"], 1.0), sums

    @functools.cache
    def train_batches(self):
        return self.data.train_batches(
            seed=self.config.seed, batch_size=self.config.batch_size, batch_multiple=self.batch_multiple
        )

    def evaluate(self, params, split: str, step: int, *, full: bool = False):
        """Loss and accuracy over the whole split; no per-example rows."""
        batches = self.data.eval_batches(split, batch_size=self.eval_batch_size, batch_multiple=self.batch_multiple)
        sums = summed(lambda batch: self._eval_step(params, self._global(batch)), batches)
        metrics = summarize(sums, self.unit)
        metrics["examples"] = int(sums["examples"])
        return metrics, None

    def predict(self, params, lines: list[str], numbers: list[int]) -> list[str]:
        """'label<TAB>probability' of the most likely class for each raw input (line
        `numbers[i]` of the input is `lines[i]`)."""
        inputs = self.data.encode(lines)
        rows = sharding.padded_rows(len(inputs), self.batch_multiple)
        padded = np.zeros((rows, *inputs.shape[1:]), inputs.dtype)
        padded[: len(inputs)] = inputs
        batch = sharding.to_global({"inputs": sharding.process_rows(padded)}, self.mesh)
        probs = sharding.all_rows(self._predict(params, batch["inputs"]))
        names = self.data.label_names
        return [f"{names[p.argmax()]}\t{p.max():.4f}" for p in probs[: len(inputs)]]

    def attention(self, params, lines: list[str], numbers: list[int], layer: int, head: int,
                  out_dir: str) -> list[str]:
        """For each input, encoder self-attention of one layer (and head, or the mean over
        heads) from the model's own forward pass: for an image, the class token's attention
        over the patches laid over the image; for a text, a heatmap over its tokens."""
        paths = []
        for n, x in enumerate(self.data.encode(lines)):
            _, state = self.model.apply({"params": params}, x[None], mutable=["intermediates"])
            weights = attention_maps.collect(state["intermediates"])
            title, matrix = attention_maps.pick(weights, "encoder/*/self_attention", layer, head)
            if x.ndim == 3:  # an image [H, W, C]; tokens: the class token, then the patches row by row
                over_patches = matrix[0, 1:]
                rows = math.isqrt(len(over_patches) * x.shape[0] // x.shape[1])
                paths.append(attention_maps.overlay(f"{title} class token", over_patches.reshape(rows, -1), x,
                                                    out_dir, n))
            else:
                tokens = self.data.tokenizer.pieces(x[x > 0])
                square = matrix[: len(tokens), : len(tokens)]
                paths.append(attention_maps.heatmap(title, square, tokens, tokens, out_dir, n))
        return paths

    def _global(self, batch: dict) -> dict:
        return sharding.to_global({k: batch[k] for k in ("inputs", "labels", "valid")}, self.mesh)
