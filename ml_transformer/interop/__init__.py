"""Hugging Face checkpoint folders (`hf:PATH`) read into our models and written from them.

`open_checkpoint` reads a folder's `config.json` and chooses the module of its
architecture; `apply_to_config` makes a run's `config.model` that architecture (and its
tokenizer the run's); `load_params` converts the tensors to our parameters. Each
architecture module (`bert`, ...) holds `ARCHITECTURES`, `TASK`, `MODEL`, `LEFT_OUT`,
`model_fields(hf_config, source)`, `rules(fields)` and `hf_config(fields)`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from types import ModuleType

import jax
import numpy as np
from absl import logging

from ml_transformer.interop import bert, folder, gpt2, marian, tensors, tokenizers, vit
from ml_transformer.interop.folder import CheckpointError

HF = "hf:"
MODULES = {architecture: module for module in (bert, vit, gpt2, marian) for architecture in module.ARCHITECTURES}
# Our model → the module exporting it (a transformers architecture that computes the same).
EXPORTS = {"seq2seq": marian, "decoder_only": gpt2, "vit": vit}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "source.spm", "target.spm", "spiece.model", "sentencepiece.bpe.model")


def hf_path(value: str | None) -> str | None:
    """The folder of an `hf:PATH` value, else None."""
    return value[len(HF):] if value and value.startswith(HF) else None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str
    architecture: str
    module: ModuleType
    fields: dict  # our config.model fields

    @property
    def source(self) -> str:
        return HF + self.path


def open_checkpoint(path: str) -> Checkpoint:
    """The checkpoint folder `path`'s architecture and our model fields for it;
    CheckpointError if it is not a checkpoint or of an architecture we do not hold."""
    hf = folder.read_config(path)
    architectures = hf.get("architectures") or []
    architecture = next((a for a in architectures if a in MODULES), None)
    if architecture is None:
        raise CheckpointError(f"hf:{path}: architecture {', '.join(architectures) or hf.get('model_type', '?')} "
                              f"is not supported (one of {', '.join(MODULES)})")
    module = MODULES[architecture]
    return Checkpoint(path, architecture, module, module.model_fields(hf, HF + path))


def apply_to_config(config, checkpoint: Checkpoint) -> None:
    """Makes `config.model` the checkpoint's architecture and its tokenizer the run's
    (`config.data.tokenizer`); ValueError if the experiment is of another task."""
    m = checkpoint.module
    if config.task != m.TASK or config.model.get("name", m.MODEL) != m.MODEL:
        raise ValueError(f"{checkpoint.source}: a {checkpoint.architecture} is a {m.MODEL} model, but this "
                         f"experiment trains config.task={config.task!r}, config.model.name="
                         f"{config.model.get('name')!r}")
    with config.unlocked():
        for name, value in checkpoint.fields.items():
            if name in config.model:  # a field may refer to another (e.g. to config.data.max_len): unlink it
                del config.model[name]
            config.model[name] = value
        config.data.tokenizer = checkpoint.source
    logging.info("%s: %s → config.model %s", checkpoint.source, checkpoint.architecture, checkpoint.fields)


def load_params(checkpoint: Checkpoint, shapes: dict[str, tuple]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(our parameters `{path: array}` that the checkpoint holds, the names of its tensors
    left out); `shapes` are our model's parameter shapes `{path: shape}`."""
    found = folder.read_tensors(checkpoint.path)
    prefix = getattr(checkpoint.module, "PREFIX", "")  # e.g. 'bert.' in BertFor* checkpoints
    found = {name.removeprefix(prefix): value for name, value in found.items()}
    return tensors.to_ours(checkpoint.module.rules(checkpoint.fields), found, shapes, checkpoint.source,
                           checkpoint.module.LEFT_OUT)


def pretrained_tokenizer(config):
    """The tokenizer of the checkpoint that `config.data.tokenizer` names ('hf:PATH', set
    by `apply_to_config`), or None when the run trains its own."""
    path = hf_path(config.data.get("tokenizer"))
    if not path:
        return None
    module = open_checkpoint(path).module
    return module.tokenizer(path) if hasattr(module, "tokenizer") else tokenizers.load(path)


def our_model(config) -> str:
    """The model that an experiment trains: seq2seq, decoder_only, vit, text_classifier."""
    by_task = {"translation": "seq2seq", "language_model": "decoder_only", "text_to_image": "decoder_only"}
    return by_task.get(config.task) or config.model.name


def export(config, params, workdir: str, output: str) -> None:
    """Writes `params` of the experiment `config` into the folder `output` as a Hugging Face
    checkpoint with its tokenizer: the imported checkpoint's tokenizer files, or the run's
    SentencePiece model (`workdir/tokenizer.model`). ValueError for a model that no
    transformers architecture computes exactly, or a non-empty `output`."""
    model = our_model(config)
    if model not in EXPORTS:
        raise ValueError(f"--mode=export: no Hugging Face architecture computes our {model} "
                         f"(exported: {', '.join(EXPORTS)})")
    if os.path.isdir(output) and os.listdir(output):
        raise ValueError(f"--output={output}: not empty")
    module = EXPORTS[model]
    pretrained = hf_path(config.data.get("tokenizer"))
    tokenizer_file = os.path.join(workdir, "tokenizer.model")
    module.export(config.model.to_dict(), tensors.flat(jax.tree.map(np.asarray, jax.device_get(params))), output,
                  tokenizer_file=None if pretrained or not os.path.isfile(tokenizer_file) else tokenizer_file)
    for name in TOKENIZER_FILES if pretrained else ():
        if os.path.isfile(os.path.join(pretrained, name)):
            shutil.copyfile(os.path.join(pretrained, name), os.path.join(output, name))


__all__ = ["HF", "Checkpoint", "CheckpointError", "apply_to_config", "hf_path", "load_params", "open_checkpoint",
           "pretrained_tokenizer", "export"]
