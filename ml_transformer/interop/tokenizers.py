"""Tokenizers of checkpoint folders: a folder's `tokenizer.json`, read with the `tokenizers`
library behind the interface of our SentencePiece `data.tokenizer.Tokenizer`; and our
SentencePiece model written as a `tokenizer.json` that `transformers.AutoTokenizer` loads."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from ml_transformer.data import tokenizer as ours
from ml_transformer.interop.folder import CheckpointError, write_json

FILE = "tokenizer.json"
CONFIG = "tokenizer_config.json"


class PretrainedTokenizer:
    """Text <-> ids as the checkpoint's tokenizer gives them, special tokens included (e.g.
    BERT's [CLS] ... [SEP]), in our id space where 0 is padding: their ids unchanged when
    their padding token is 0, else shifted as `tensors.Rule('vocab:V')` shifts the
    embeddings (their i is our (i + 1) mod vocab_size; a vocabulary with no padding token
    gains our 0)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, source: str):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        size = tokenizer.get_vocab_size()
        pad = self._their_id("[PAD]", "<pad>")
        if pad not in (0, size - 1, None):
            raise CheckpointError(f"{source}: padding token id {pad}: only 0, the last id or none can be mapped to ours")
        self.shift = pad != 0
        self.vocab_size = size + (pad is None)
        self.pad_id = 0
        self.unk_id = self._ours(self._their_id("[UNK]", "<unk>", "<|endoftext|>"))
        self.bos_id = self._ours(self._their_id("[CLS]", "<s>", "<|endoftext|>"))
        self.eos_id = self._ours(self._their_id("[SEP]", "</s>", "<|endoftext|>"))

    def _their_id(self, *tokens: str) -> int | None:
        return next((self._tokenizer.token_to_id(t) for t in tokens if self._tokenizer.token_to_id(t) is not None),
                    None)

    def _ours(self, i: int | None) -> int | None:
        return i if i is None or not self.shift else (i + 1) % self.vocab_size

    def _theirs(self, ids: Sequence[int]) -> list[int]:
        return [(int(i) - 1) % self.vocab_size for i in ids if int(i) != 0] if self.shift else [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """The ids of each text, ending with EOS as ours do (added unless the tokenizer's
        own template ends with it, as BERT's [SEP] does)."""
        encoded = [[(i + 1) % self.vocab_size for i in e.ids] if self.shift else e.ids
                   for e in self._tokenizer.encode_batch(list(texts))]
        return [ids if ids[-1:] == [self.eos_id] else ids + [self.eos_id] for ids in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(self._theirs(ids), skip_special_tokens=True)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.id_to_token(self._theirs([i])[0]) if i else "<pad>" for i in map(int, ids)]


def load(path: str) -> PretrainedTokenizer:
    """The tokenizer of the checkpoint folder `path`."""
    file = os.path.join(path, FILE)
    if not os.path.isfile(file):
        raise CheckpointError(f"hf:{path}: no {FILE} (the tokenizer)")
    try:
        return PretrainedTokenizer(tokenizers.Tokenizer.from_file(file), f"hf:{file}")
    except Exception as e:  # the library raises bare Exceptions for unreadable files
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"hf:{file}: not a readable tokenizer ({e})") from None


def write_sentencepiece(model_file: str, output: str, *, bos: bool, eos: bool, max_len: int,
                        without_padding: bool = False) -> None:
    """Writes our SentencePiece model `model_file` into the folder `output` as the
    `tokenizer.json` of the same unigram model, normalization and pieces (so the same ids),
    with BOS before and/or EOS after every text, and a `tokenizer_config.json`.
    `without_padding` leaves out the padding piece, each id one less (as a GPT-2 export's
    vocabulary, which has no padding token)."""
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{model_file}: only unigram SentencePiece models are exported")
    first = int(without_padding)
    unigram = models.Unigram([(p.piece, p.score) for p in proto.pieces[first:]], unk_id=ours.UNK_ID - first,
                             byte_fallback=False)
    tokenizer = tokenizers.Tokenizer(unigram)
    charsmap = proto.normalizer_spec.precompiled_charsmap
    tokenizer.normalizer = normalizers.Sequence(
        ([normalizers.Precompiled(charsmap)] if charsmap else []) + [normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    names = ("pad_token", "unk_token", "bos_token", "eos_token")
    special = {name: proto.pieces[i].piece for name, i in zip(names, (ours.PAD_ID, ours.UNK_ID, ours.BOS_ID, ours.EOS_ID))
               if i >= first}
    tokenizer.add_special_tokens(list(special.values()))
    bos_token, eos_token = special["bos_token"], special["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(([bos_token] if bos else []) + ["$A"] + ([eos_token] if eos else [])),
        special_tokens=[(bos_token, ours.BOS_ID - first), (eos_token, ours.EOS_ID - first)])
    os.makedirs(output, exist_ok=True)
    tokenizer.save(os.path.join(output, FILE))
    write_json(os.path.join(output, CONFIG),
               {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **special})
