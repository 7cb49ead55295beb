"""GPT-2 (`GPT2LMHeadModel`) ↔ our decoder-only language model (`models/decoder_only.py`).

GPT-2 is ours with unscaled token embeddings: pre-LN, learned positions, the output tied
to the embedding. Its Conv1D weights are `[in, out]` as our kernels are; `c_attn` holds
the query, key and value projections side by side. GPT-2 has no padding token: its id i
is our i + 1 and our 0 (padding) is a new zero row. Positions agree when a left-padded
input passes `position_ids` that count real tokens only, as ours do.

Export folds our √d_model embedding scale into the weights: with a pre-LN stack and a
tied output, E' = √d·E and a final LayerNorm divided by √d give the same logits
(LN(h)·Eᵀ = (LN(h)/√d)·E'ᵀ).
"""

from __future__ import annotations

import re

import numpy as np

from ml_transformer.interop import folder, tensors
from ml_transformer.interop.bert import HF_ACTIVATIONS, activation
from ml_transformer.interop.folder import CheckpointError
from ml_transformer.interop.tensors import Rule, layer_norm_rules
from ml_transformer.interop.tokenizers import write_sentencepiece
from ml_transformer.models.decoder_only import DecoderOnlyConfig
from ml_transformer.nn.blocks import BlockConfig

ARCHITECTURES = ("GPT2LMHeadModel",)
TASK, MODEL = "language_model", "decoder_only"
# the tied output (when saved) and the attention buffers of older checkpoints (causal mask, -1e4)
LEFT_OUT = ("lm_head.weight", "h.*.attn.bias", "h.*.attn.masked_bias")
PREFIX = "transformer."
# switches of GPT2Config our model cannot follow: (name, the value we hold, why)
_FIXED = (("add_cross_attention", False, "a decoder-only model has no cross-attention"),
          ("scale_attn_weights", True, "our attention divides scores by √d_head"),
          ("scale_attn_by_inverse_layer_idx", False, "our attention scores are not scaled by layer"),
          ("tie_word_embeddings", True, "our output projection is the token embedding"))


def model_fields(hf: dict, source: str) -> dict:
    """The `config.model` fields of our decoder-only model; `vocab_size` is GPT-2's plus one
    (our padding). `reorder_and_upcast_attn` changes only half-precision rounding: ignored."""
    for name, value, why in _FIXED:
        if hf.get(name, value) != value:
            raise CheckpointError(f"{source}: {name}={hf[name]} is not supported ({why})")
    d = hf["n_embd"]
    return dict(
        vocab_size=hf["vocab_size"] + 1, d_model=d, num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
        num_layers=hf["n_layer"], max_len=hf["n_positions"], pre_ln=True, position="learned",
        activation=activation(hf, "activation_function", source, default="gelu_new"),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), scale_embeddings=False,
    )


def rules(fields: dict) -> list[Rule]:
    """Names without `PREFIX`."""
    d = fields["d_model"]
    out = [Rule("embedding/embedding", "wte.weight", f"vocab:{fields['vocab_size'] - 1}"),
           Rule("position/embedding", "wpe.weight"), *layer_norm_rules("final_norm", "ln_f")]
    for i in range(fields["num_layers"]):
        ours, theirs = f"layers_{i}", f"h.{i}"
        for j, sub in enumerate(("query", "key", "value")):
            out += [Rule(f"{ours}/self_attention/{sub}/kernel", f"{theirs}.attn.c_attn.weight", f"fused:{j}/3", (d, d)),
                    Rule(f"{ours}/self_attention/{sub}/bias", f"{theirs}.attn.c_attn.bias", f"fused:{j}/3", (d,))]
        out += [Rule(f"{ours}/self_attention/out/kernel", f"{theirs}.attn.c_proj.weight", "copy", (d, d)),
                Rule(f"{ours}/self_attention/out/bias", f"{theirs}.attn.c_proj.bias"),
                Rule(f"{ours}/feed_forward/Dense_0/kernel", f"{theirs}.mlp.c_fc.weight"),
                Rule(f"{ours}/feed_forward/Dense_0/bias", f"{theirs}.mlp.c_fc.bias"),
                Rule(f"{ours}/feed_forward/Dense_1/kernel", f"{theirs}.mlp.c_proj.weight"),
                Rule(f"{ours}/feed_forward/Dense_1/bias", f"{theirs}.mlp.c_proj.bias"),
                *layer_norm_rules(f"{ours}/residual_self/LayerNorm_0", f"{theirs}.ln_1"),
                *layer_norm_rules(f"{ours}/residual_ff/LayerNorm_0", f"{theirs}.ln_2")]
    return out


def hf_config(fields: dict) -> dict:
    """The `config.json` of our model (unscaled embeddings) as a `GPT2LMHeadModel`. Its
    tokens' ids (bos, eos) belong to the tokenizer and are left unset."""
    return dict(
        architectures=list(ARCHITECTURES), model_type="gpt2", vocab_size=fields["vocab_size"] - 1,
        n_embd=fields["d_model"], n_head=fields["num_heads"], n_inner=fields["d_ff"], n_layer=fields["num_layers"],
        n_positions=fields["max_len"], activation_function=HF_ACTIVATIONS[fields["activation"]],
        layer_norm_epsilon=fields["layer_norm_epsilon"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **{name: value for name, value, _ in _FIXED}, reorder_and_upcast_attn=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, torch_dtype="float32",
    )


def export(model_fields: dict, params: dict[str, np.ndarray], output: str, tokenizer_file: str | None = None) -> None:
    """Writes our decoder-only model (`config.model` fields, flat parameters) into the folder
    `output` as a `GPT2LMHeadModel`; ValueError for a model it cannot hold. GPT-2 has no
    padding token: our id i is its i - 1. `tokenizer_file`, our SentencePiece model, is
    written as a `tokenizer.json` with those ids that puts BOS first, as our prompts have it."""
    if not model_fields.get("pre_ln", DecoderOnlyConfig.block.pre_ln):
        raise ValueError("config.model.pre_ln=False: GPT-2 is pre-LN; a post-LN model cannot be exported to it")
    if model_fields.get("position", DecoderOnlyConfig.position) != "learned":
        raise ValueError(f"config.model.position={model_fields['position']!r}: GPT-2 has learned positions "
                         "(position='learned') only")
    embedding = params["embedding/embedding"]
    query = params["layers_0/self_attention/query/kernel"]
    fields = dict(
        vocab_size=embedding.shape[0], d_model=embedding.shape[1], num_heads=query.shape[1],
        d_ff=params["layers_0/feed_forward/Dense_0/kernel"].shape[1],
        num_layers=len({m.group(1) for n in params if (m := re.match(r"layers_(\d+)/", n))}),
        max_len=params["position/embedding"].shape[0], pre_ln=True, position="learned",
        activation=model_fields.get("activation", BlockConfig.activation),
        layer_norm_epsilon=model_fields.get("layer_norm_epsilon", BlockConfig.layer_norm_epsilon),
        scale_embeddings=False,
    )
    if model_fields.get("scale_embeddings", DecoderOnlyConfig.scale_embeddings):
        scale = np.sqrt(np.float32(fields["d_model"]))
        params = {**params, "embedding/embedding": embedding * scale,
                  **{f"final_norm/{p}": params[f"final_norm/{p}"] / scale for p in ("scale", "bias")}}
    theirs = tensors.to_theirs(rules(fields), params)
    folder.write(output, hf_config(fields), {PREFIX + name: w for name, w in theirs.items()})
    if tokenizer_file:
        write_sentencepiece(tokenizer_file, output, bos=True, eos=False, max_len=fields["max_len"], without_padding=True)
