"""Vision Transformers (`ViTForImageClassification`, `ViTModel`) ↔ our ViT (`models/vit.py`).

Hugging Face's ViT is ours with `pool='token'`: pre-LN, a class token, learned positions,
a final LayerNorm and the classifier on the class token. Its images are NCHW, ours NHWC
(the Conv2d patch embedding becomes our dense one). A `ViTModel` has no classifier: our
head is new, and its pooler (a dense layer with tanh over the class token) is left out.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ml_transformer.interop import folder, tensors
from ml_transformer.interop.bert import HF_ACTIVATIONS, activation
from ml_transformer.interop.folder import CheckpointError
from ml_transformer.interop.tensors import Rule, encoder_layer_rules, layer_norm_rules
from ml_transformer.models.vit import ViT, variant

ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
TASK, MODEL = "classification", "vit"
LEFT_OUT = ("pooler.", "embeddings.mask_token")
PREFIX = "vit."  # of the encoder's tensors in ViTForImageClassification checkpoints
HEAD = "classifier."
_LAYER = {"self_attention.query": "attention.attention.query", "self_attention.key": "attention.attention.key",
          "self_attention.value": "attention.attention.value", "self_attention.out": "attention.output.dense",
          "ff_in": "intermediate.dense", "ff_out": "output.dense",
          "residual_attention": "layernorm_before", "residual_ff": "layernorm_after"}


def _square(hf: dict, key: str, source: str) -> int:
    value = hf[key]
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{source}: {key}={value} is not supported (square only)")
        value = value[0]
    return int(value)


def model_fields(hf: dict, source: str) -> dict:
    """The `config.model` fields of our ViT; `num_classes` too for a classifier's checkpoint
    (its head is then the classifier), `num_channels` for the patch embedding."""
    if not hf.get("qkv_bias", True):
        raise CheckpointError(f"{source}: qkv_bias=False is not supported (our attention projections have biases)")
    fields = dict(
        variant="", patch_size=_square(hf, "patch_size", source), d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        image_size=_square(hf, "image_size", source), num_channels=hf.get("num_channels", 3), pool="token",
        activation=activation(hf, "hidden_act", source), layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12),
    )
    if "ViTForImageClassification" in hf.get("architectures", ()):
        fields["num_classes"] = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    return fields


def rules(fields: dict) -> list[Rule]:
    """Names without `PREFIX`; the head's only when `fields` has `num_classes`."""
    out = [Rule("cls", "embeddings.cls_token"), Rule("position_embedding", "embeddings.position_embeddings"),
           Rule("patch_embedding/projection/kernel", "embeddings.patch_embeddings.projection.weight",
                f"patches:{fields['num_channels']}"),
           Rule("patch_embedding/projection/bias", "embeddings.patch_embeddings.projection.bias"),
           *layer_norm_rules("encoder/final_norm", "layernorm")]
    for i in range(fields["num_layers"]):
        out += encoder_layer_rules(f"encoder/layers_{i}", f"encoder.layer.{i}", _LAYER)
    if "num_classes" in fields:
        out += [Rule("head/kernel", f"{HEAD}weight", "linear"), Rule("head/bias", f"{HEAD}bias")]
    return out


def hf_config(fields: dict) -> dict:
    """The `config.json` of our ViT (with `num_classes`) as a `ViTForImageClassification`."""
    labels = [f"LABEL_{i}" for i in range(fields["num_classes"])]
    return dict(
        architectures=["ViTForImageClassification"], model_type="vit", hidden_size=fields["d_model"],
        num_hidden_layers=fields["num_layers"], num_attention_heads=fields["num_heads"],
        intermediate_size=fields["d_ff"], hidden_act=HF_ACTIVATIONS[fields["activation"]],
        layer_norm_eps=fields["layer_norm_epsilon"], image_size=fields["image_size"],
        patch_size=fields["patch_size"], num_channels=fields["num_channels"], qkv_bias=True,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, torch_dtype="float32",
    )


def export(model_fields: dict, params: dict[str, np.ndarray], output: str, tokenizer_file: None = None) -> None:
    """Writes our ViT (`config.model` fields, flat parameters) into the folder `output` as a
    `ViTForImageClassification`; ValueError for a model it cannot hold. (Images need no
    tokenizer: `tokenizer_file` is None.)"""
    if model_fields.get("pool", ViT.pool) != "token":
        raise ValueError(f"config.model.pool={model_fields['pool']!r}: a ViTForImageClassification classifies "
                         "the class token (pool='token'); the mean of the patches cannot be exported")
    fields = _fields_of_params(model_fields, params)
    theirs = tensors.to_theirs(rules(fields), params)
    folder.write(output, hf_config(fields), {n if n.startswith(HEAD) else PREFIX + n: w for n, w in theirs.items()})


def _fields_of_params(model_fields: dict, params: dict[str, np.ndarray]) -> dict:
    """`model_fields` completed as `model_fields` gives them, the sizes read from `params`."""
    patch = model_fields.get("patch_size") or variant(model_fields["variant"])["patch_size"]
    grid = params["position_embedding"].shape[1] - 1
    side = math.isqrt(grid)
    if side * side != grid:
        raise ValueError(f"position_embedding: {grid} patches are not a square grid (Hugging Face's ViT needs one)")
    query = params["encoder/layers_0/self_attention/query/kernel"]
    return dict(
        variant="", patch_size=patch, d_model=query.shape[0], num_heads=query.shape[1],
        num_layers=len({m.group(1) for n in params if (m := re.match(r"encoder/layers_(\d+)/", n))}),
        d_ff=params["encoder/layers_0/feed_forward/Dense_0/kernel"].shape[1], image_size=side * patch,
        num_channels=params["patch_embedding/projection/kernel"].shape[0] // patch**2, pool="token",
        activation=model_fields.get("activation", ViT.activation),
        layer_norm_epsilon=model_fields.get("layer_norm_epsilon", ViT.layer_norm_epsilon),
        num_classes=params["head/kernel"].shape[1],
    )
