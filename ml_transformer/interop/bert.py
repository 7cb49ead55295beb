"""BERT-family encoders (`BertModel`, e.g. MiniLM) ↔ the text classifier's encoder.

BERT is post-LN with an embedding LayerNorm, unscaled token embeddings, learned absolute
positions and token types (every token of ours is type 0). The classifier head is ours
(new when fine-tuning); BERT's pooler has no place in our model and is left out.
"""

from __future__ import annotations

from ml_transformer.interop.folder import CheckpointError
from ml_transformer.interop.tensors import Rule, encoder_layer_rules, layer_norm_rules

ARCHITECTURES = ("BertModel",)
TASK, MODEL = "classification", "text_classifier"
LEFT_OUT = ("pooler.", "embeddings.position_ids")
PREFIX = "bert."  # of BertFor* checkpoints' encoder tensors

# Hugging Face activation names → ours (nn.blocks.ACTIVATIONS).
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu",
               "silu": "silu", "swish": "silu"}
HF_ACTIVATIONS = {"gelu_exact": "gelu", "gelu": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}  # ours → theirs
_LAYER = {"self_attention.query": "attention.self.query", "self_attention.key": "attention.self.key",
          "self_attention.value": "attention.self.value", "self_attention.out": "attention.output.dense",
          "ff_in": "intermediate.dense", "ff_out": "output.dense",
          "residual_attention": "attention.output.LayerNorm", "residual_ff": "output.LayerNorm"}


def activation(hf: dict, key: str, source: str, default: str = "gelu") -> str:
    name = hf.get(key, default)
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{source}: {key}={name!r} is not supported (one of {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def model_fields(hf: dict, source: str) -> dict:
    """The `config.model` fields of the text classifier that holds this encoder."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type={hf['position_embedding_type']!r} "
                              "is not supported (absolute)")
    return dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], max_len=hf["max_position_embeddings"],
        pre_ln=False, activation=activation(hf, "hidden_act", source), layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12),
        scale_embeddings=False, type_vocab_size=hf.get("type_vocab_size", 2), embedding_norm=True,
    )


def rules(fields: dict) -> list[Rule]:
    out = [Rule("embed/embedding", "embeddings.word_embeddings.weight"),
           Rule("position/embedding", "embeddings.position_embeddings.weight"),
           Rule("token_type", "embeddings.token_type_embeddings.weight"),
           *layer_norm_rules("embedding_norm", "embeddings.LayerNorm")]
    for i in range(fields["num_layers"]):
        out += encoder_layer_rules(f"encoder/layers_{i}", f"encoder.layer.{i}", _LAYER)
    return out


def hf_config(fields: dict) -> dict:
    """The `config.json` of our encoder as a `BertModel`."""
    return dict(
        architectures=list(ARCHITECTURES), model_type="bert", vocab_size=fields["vocab_size"],
        hidden_size=fields["d_model"], num_attention_heads=fields["num_heads"],
        intermediate_size=fields["d_ff"], num_hidden_layers=fields["num_layers"],
        max_position_embeddings=fields["max_len"], hidden_act=HF_ACTIVATIONS[fields["activation"]],
        layer_norm_eps=fields["layer_norm_epsilon"], type_vocab_size=fields["type_vocab_size"],
        pad_token_id=0, position_embedding_type="absolute", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, torch_dtype="float32",
    )
