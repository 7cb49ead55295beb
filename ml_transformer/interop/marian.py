"""Marian (`MarianMTModel`, e.g. Helsinki-NLP's OPUS-MT) and Pegasus
(`PegasusForConditionalGeneration`) ↔ the translation task's encoder-decoder, and
transformers' `MarianTokenizer` files.

Both hold one token embedding shared by encoder and decoder and tied to the output, a
final logits bias, torch's LayerNorm epsilon 1e-5 and Marian's sinusoidal table (sines in
the first half of the features, cosines in the second, positions from 0: our
'sinusoidal_halves'). That table is computed, never learned (transformers freezes it and
recomputes it from the config), so the `embed_positions` tensors a checkpoint may hold
are left out, as are the copies of the tied embedding that older checkpoints save.
Marian is post-LN; Pegasus is pre-LN with a final LayerNorm after encoder and decoder.
Marian's padding is its last id: its vocabulary is shifted (`Rule('vocab:V')`, its pad our
0, its eos 0 our 1, ...); Pegasus's padding is 0 already. The decoder starts with their
`decoder_start_token_id` (Marian's padding: our 0), our `bos_id`.

Export writes a post-LN model as a `MarianMTModel`, a pre-LN one as a Pegasus. A model
with our interleaved table ('sinusoidal') is exported with the residual stream's features
reordered to Marian's layout (`halves_order`): every tensor's d_model axis is permuted the
same way (embedding columns, the input axis of query/key/value/fc1, the output axis and
bias of the attention outputs and fc2, every LayerNorm's scale and bias). The blocks read
the stream only feature by feature or through sums over all features (projections,
LayerNorm's mean and variance), so it stays permuted layer after layer, and the tied
logits, sums over the features, are unchanged. transformers' LayerNorm epsilon is fixed at
1e-5: a model trained with another (ours defaults to 1e-6) is exported with a warning
(on tiny random models, logits of size ~4 moved by ~2e-5).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import sentencepiece as spm
from absl import logging

from ml_transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_tokenizer
from ml_transformer.interop import folder, tensors, tokenizers
from ml_transformer.interop.bert import HF_ACTIVATIONS, activation
from ml_transformer.interop.folder import CheckpointError
from ml_transformer.interop.tensors import Rule, encoder_layer_rules, layer_norm_rules
from ml_transformer.models.seq2seq import Seq2SeqConfig
from ml_transformer.nn.blocks import BlockConfig
from ml_transformer.nn.embeddings import sinusoidal_encoding

ARCHITECTURES = ("MarianMTModel", "PegasusForConditionalGeneration")
TASK, MODEL = "translation", "seq2seq"
LEFT_OUT = ("model.encoder.embed_positions.", "model.decoder.embed_positions.", "model.encoder.embed_tokens.",
            "model.decoder.embed_tokens.", "lm_head.")
TORCH_EPSILON = 1e-5
GENERATION = "generation_config.json"

_SELF = {"self_attention.query": "self_attn.q_proj", "self_attention.key": "self_attn.k_proj",
         "self_attention.value": "self_attn.v_proj", "self_attention.out": "self_attn.out_proj",
         "ff_in": "fc1", "ff_out": "fc2", "residual_ff": "final_layer_norm"}
_ENCODER = {**_SELF, "residual_attention": "self_attn_layer_norm"}
_DECODER = {**_SELF, "cross_attention.query": "encoder_attn.q_proj", "cross_attention.key": "encoder_attn.k_proj",
            "cross_attention.value": "encoder_attn.v_proj", "cross_attention.out": "encoder_attn.out_proj",
            "residual_self": "self_attn_layer_norm", "residual_cross": "encoder_attn_layer_norm"}


def _token(value) -> str:  # a tokenizer_config.json token: a string or {"content": ...}
    return value["content"] if isinstance(value, dict) else value


def _shifted(pad: int, size: int, source: str) -> bool:
    """Whether a vocabulary of `size` ids with padding `pad` is shifted to make padding our 0."""
    if pad not in (0, size - 1):
        raise CheckpointError(f"{source}: pad_token_id={pad}: only 0 or the last id ({size - 1}) can be our padding 0")
    return pad != 0


def _decoder_start(hf: dict) -> int:
    start = hf.get("decoder_start_token_id")
    return hf["pad_token_id"] if start is None else start


def model_fields(hf: dict, source: str) -> dict:
    """The `config.model` fields of our encoder-decoder, with `bos_id` (their decoder start)
    and `eos_id` in our ids and `shifted_vocab` (whether their id i is our (i + 1) mod V)."""
    for key in ("share_encoder_decoder_embeddings", "tie_word_embeddings"):
        if not hf.get(key, True):
            raise CheckpointError(f"{source}: {key}=false is not supported (our encoder, decoder and output "
                                  "share one embedding)")
    for encoder, decoder in (("encoder_attention_heads", "decoder_attention_heads"),
                             ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[encoder] != hf[decoder]:
            raise CheckpointError(f"{source}: {encoder}={hf[encoder]} but {decoder}={hf[decoder]} "
                                  "(our encoder and decoder blocks have the same sizes)")
    size, pad = hf["vocab_size"], hf["pad_token_id"]
    shifted = _shifted(pad, size, source)
    ours = lambda i: (i + 1) % size if shifted else i  # noqa: E731
    return dict(
        vocab_size=size, d_model=hf["d_model"], num_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
        num_encoder_layers=hf["encoder_layers"], num_decoder_layers=hf["decoder_layers"],
        max_len=hf["max_position_embeddings"], pre_ln=hf["model_type"] == "pegasus", position="sinusoidal_halves",
        share_embeddings=True, tie_output=True, activation=activation(hf, "activation_function", source),
        layer_norm_epsilon=TORCH_EPSILON, scale_embeddings=bool(hf.get("scale_embedding", False)),
        final_logits_bias=True, bos_id=ours(_decoder_start(hf)), eos_id=ours(hf["eos_token_id"]),
        shifted_vocab=shifted,
    )


def rules(fields: dict) -> list[Rule]:
    size = fields["vocab_size"]
    vocab = f"vocab:{size}" if fields["shifted_vocab"] else "copy"
    out = [Rule("source_embedding/embedding", "model.shared.weight", vocab),
           Rule("final_logits_bias", "final_logits_bias", vocab, (1, size))]
    for i in range(fields["num_encoder_layers"]):
        out += encoder_layer_rules(f"encoder/layers_{i}", f"model.encoder.layers.{i}", _ENCODER)
    for i in range(fields["num_decoder_layers"]):
        out += encoder_layer_rules(f"decoder/layers_{i}", f"model.decoder.layers.{i}", _DECODER)
    if fields["pre_ln"]:
        out += layer_norm_rules("encoder/final_norm", "model.encoder.layer_norm")
        out += layer_norm_rules("decoder/final_norm", "model.decoder.layer_norm")
    return out


def hf_config(fields: dict) -> dict:
    """The `config.json` of our model as a `MarianMTModel` (post-LN) or a Pegasus (pre-LN)."""
    size, pegasus = fields["vocab_size"], fields["pre_ln"]
    return dict(
        architectures=[ARCHITECTURES[pegasus]], model_type="pegasus" if pegasus else "marian", vocab_size=size,
        d_model=fields["d_model"], encoder_layers=fields["num_encoder_layers"],
        decoder_layers=fields["num_decoder_layers"], encoder_attention_heads=fields["num_heads"],
        decoder_attention_heads=fields["num_heads"], encoder_ffn_dim=fields["d_ff"], decoder_ffn_dim=fields["d_ff"],
        max_position_embeddings=fields["max_len"], activation_function=HF_ACTIVATIONS[fields["activation"]],
        scale_embedding=fields["scale_embeddings"], tie_word_embeddings=True, is_encoder_decoder=True,
        **({} if pegasus else dict(share_encoder_decoder_embeddings=True, decoder_vocab_size=size)),
        **generation_config(fields), bos_token_id=None, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, torch_dtype="float32",
    )


def generation_config(fields: dict) -> dict:
    """The token ids of generation, theirs: decoding starts with our bos_id and a sequence
    that reaches the length limit ends with eos, as our `translate` does."""
    size = fields["vocab_size"]
    theirs = lambda i: (i - 1) % size if fields["shifted_vocab"] else i  # noqa: E731
    pad, eos = theirs(0), theirs(fields["eos_id"])
    return dict(pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=theirs(fields["bos_id"]),
                forced_eos_token_id=eos)


# Our parameters' d_model axis, by the last two parts of their path (None: they have none).
_RESIDUAL_AXIS = {"source_embedding/embedding": 1, "query/kernel": 0, "key/kernel": 0, "value/kernel": 0,
                  "out/kernel": 2, "out/bias": 0, "Dense_0/kernel": 0, "Dense_1/kernel": 1, "Dense_1/bias": 0,
                  "LayerNorm_0/scale": 0, "LayerNorm_0/bias": 0, "final_norm/scale": 0, "final_norm/bias": 0,
                  "query/bias": None, "key/bias": None, "value/bias": None, "Dense_0/bias": None,
                  "final_logits_bias": None}


def halves_order(d_model: int) -> np.ndarray:
    """Feature j of Marian's table is feature `order[j]` of ours: sin(pos·r_i) is our 2i and
    their i, cos(pos·r_i) our 2i + 1 and their d/2 + i."""
    return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def permute_residual(params: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """`params` with the residual stream's feature j taken from feature `order[j]`."""
    out = {}
    for path, w in params.items():
        axis = _RESIDUAL_AXIS["/".join(path.split("/")[-2:]) if "/" in path else path]
        out[path] = w if axis is None else np.take(w, order, axis=axis)
    return out


def export(model_fields: dict, params: dict[str, np.ndarray], output: str, tokenizer_file: str | None = None) -> None:
    """Writes our encoder-decoder (`config.model` fields with `bos_id`, flat parameters) into
    the folder `output` as a `MarianMTModel` (post-LN) or a `PegasusForConditionalGeneration`
    (pre-LN), with a `generation_config.json` that also bans padding as an output (as
    OPUS-MT's do and our `translate` does); ValueError for a model neither can hold.

    `tokenizer_file`: our SentencePiece model (or None), written as a MarianTokenizer whose
    source.spm and target.spm are both it and whose vocab.json maps each piece to its id.
    (An imported model's tokenizer is its checkpoint's: `interop.export` copies its files.)
    """
    fields = _fields_of_params(model_fields, params)
    params = {"final_logits_bias": np.zeros(fields["vocab_size"], np.float32), **params}
    if fields["position"] == "sinusoidal":
        params = permute_residual(params, halves_order(fields["d_model"]))
    if fields["layer_norm_epsilon"] != TORCH_EPSILON:
        logging.warning("config.model.layer_norm_epsilon=%g: exported with transformers' fixed %g",
                        fields["layer_norm_epsilon"], TORCH_EPSILON)
    theirs = tensors.to_theirs(rules(fields), params)
    if fields["pre_ln"]:  # Pegasus saves its fixed tables (transformers reports them missing otherwise)
        table = sinusoidal_encoding(fields["max_len"], fields["d_model"], halves=True)
        theirs.update({f"model.{side}.embed_positions.weight": table for side in ("encoder", "decoder")})
    folder.write(output, hf_config(fields), theirs)
    generation = generation_config(fields)
    folder.write_json(os.path.join(output, GENERATION), {**generation, "bad_words_ids": [[generation["pad_token_id"]]]})
    if tokenizer_file:
        _write_tokenizer(tokenizer_file, output, fields)


def _fields_of_params(model_fields: dict, params: dict[str, np.ndarray]) -> dict:
    """`model_fields` completed with their defaults, the sizes read from `params`."""
    get = lambda name, default: model_fields.get(name, default)  # noqa: E731
    position = get("position", Seq2SeqConfig.position)
    if position not in ("sinusoidal", "sinusoidal_halves"):
        raise ValueError(f"config.model.position={position!r}: Marian and Pegasus compute sinusoidal positions "
                         "(position='sinusoidal' or 'sinusoidal_halves'); they hold no position table")
    for name in ("share_embeddings", "tie_output"):
        if not get(name, getattr(Seq2SeqConfig, name)):
            raise ValueError(f"config.model.{name}=False: Marian and Pegasus exports hold one token embedding "
                             "shared by encoder, decoder and output")
    embedding = params["source_embedding/embedding"]
    query = params["encoder/layers_0/self_attention/query/kernel"]
    layers = lambda side: len({n.split("/")[1] for n in params if n.startswith(f"{side}/layers_")})  # noqa: E731
    return dict(
        vocab_size=embedding.shape[0], d_model=embedding.shape[1], num_heads=query.shape[1],
        d_ff=params["encoder/layers_0/feed_forward/Dense_0/kernel"].shape[1],
        num_encoder_layers=layers("encoder"), num_decoder_layers=layers("decoder"),
        max_len=get("max_len", Seq2SeqConfig.max_len), pre_ln=get("pre_ln", BlockConfig.pre_ln), position=position,
        activation=get("activation", BlockConfig.activation),
        layer_norm_epsilon=get("layer_norm_epsilon", BlockConfig.layer_norm_epsilon),
        scale_embeddings=get("scale_embeddings", Seq2SeqConfig.scale_embeddings),
        bos_id=get("bos_id", BOS_ID), eos_id=get("eos_id", EOS_ID), shifted_vocab=get("shifted_vocab", False),
    )


def _write_tokenizer(tokenizer_file: str, output: str, fields: dict) -> None:
    """The tokenizer files of `export`."""
    if fields["shifted_vocab"]:
        raise ValueError(f"{tokenizer_file}: a model imported with a shifted vocabulary keeps its checkpoint's "
                         "tokenizer, not a SentencePiece model of ours")
    size = load_tokenizer(tokenizer_file).vocab_size
    if size != fields["vocab_size"]:
        raise ValueError(f"{tokenizer_file}: {size} pieces, but the model's vocabulary has {fields['vocab_size']}")
    sp = spm.SentencePieceProcessor(model_file=tokenizer_file)
    for name in ("source.spm", "target.spm"):
        shutil.copyfile(tokenizer_file, os.path.join(output, name))
    folder.write_json(os.path.join(output, "vocab.json"), {sp.id_to_piece(i): i for i in range(size)})
    folder.write_json(os.path.join(output, "tokenizer_config.json"), dict(
        tokenizer_class="MarianTokenizer", pad_token=sp.id_to_piece(PAD_ID), unk_token=sp.id_to_piece(UNK_ID),
        eos_token=sp.id_to_piece(fields["eos_id"]), separate_vocabs=False, model_max_length=fields["max_len"]))


class MarianTokenizer:
    """transformers' `MarianTokenizer` of a checkpoint folder (one vocabulary for source and
    target) in our id space, behind the interface of `data.tokenizer.Tokenizer`.

    `encode`: a leading language code such as '>>fr<<' kept whole, the rest cut into
    pieces by `source.spm`, each looked up in `vocab.json` (an unknown piece is <unk>), then
    </s>. `decode`: the pieces of the ids before the first </s>, special ones dropped,
    joined by `target.spm`. Our translation task encodes targets with `encode` too, as the
    source side. Ids are shifted when the padding is the vocabulary's last id, as
    `model_fields` shifts the model's; `bos_id` (ours) is the model's decoder start.
    transformers also applies Moses punctuation normalisation when `sacremoses` is
    installed: not here.
    """

    def __init__(self, path: str, bos_id: int):
        source = f"hf:{path}"
        settings = _read_json(path, "tokenizer_config.json")
        if settings.get("separate_vocabs"):
            raise CheckpointError(f"{source}: separate_vocabs=true is not supported (our source and target "
                                  "share one vocabulary)")
        vocab = _read_json(path, "vocab.json")
        pad, unk, eos = (vocab.get(_token(settings.get(f"{name}_token", default)))
                         for name, default in (("pad", "<pad>"), ("unk", "<unk>"), ("eos", "</s>")))
        if None in (pad, unk, eos):
            raise CheckpointError(f"{source}/vocab.json: lacks the pad, unk or eos token of tokenizer_config.json")
        self.vocab_size = len(vocab)
        self.shift = _shifted(pad, self.vocab_size, source)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, self._ours(unk), bos_id, self._ours(eos)
        self._ids = {piece: self._ours(i) for piece, i in vocab.items()}
        self._pieces = {i: piece for piece, i in self._ids.items()}
        self._source, self._target = (spm.SentencePieceProcessor(model_file=_file(path, f"{side}.spm"))
                                      for side in ("source", "target"))

    def _ours(self, i: int) -> int:
        return (i + 1) % self.vocab_size if self.shift else i

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts) -> list[list[int]]:
        out = []
        for text in texts:
            code = re.match(r">>.*?<<", text)  # one piece, e.g. '>>fr<<' for a multilingual model
            rest = text[code.end():] if code else text
            pieces = ([code.group()] if code else []) + self._source.encode(rest, out_type=str)
            out.append([self._ids.get(p, self.unk_id) for p in pieces] + [self.eos_id])
        return out

    def decode(self, ids) -> str:
        kept = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id, self.unk_id):
                kept.append(self._pieces[i])
        return self._target.decode_pieces(kept).replace("\u2581", " ").strip()

    def pieces(self, ids) -> list[str]:
        return [self._pieces[int(i)] for i in ids]


def _file(path: str, name: str) -> str:
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise CheckpointError(f"hf:{path}: no {name} (of its MarianTokenizer)")
    return file


def _read_json(path: str, name: str) -> dict:
    with open(_file(path, name), encoding="utf-8") as f:
        return json.load(f)


def tokenizer(path: str):
    """The tokenizer of the checkpoint folder `path`: its MarianTokenizer files, else its
    `tokenizer.json` (`tokenizers.load`), with the model's decoder start as `bos_id`."""
    bos_id = model_fields(folder.read_config(path), f"hf:{path}")["bos_id"]
    if os.path.isfile(os.path.join(path, "vocab.json")):
        return MarianTokenizer(path, bos_id)
    loaded = tokenizers.load(path)
    loaded.bos_id = bos_id
    return loaded
