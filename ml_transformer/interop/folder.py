"""Hugging Face checkpoint folders: `config.json` and `model.safetensors` (or its shards),
read and written through the `safetensors` library's numpy interface (no PyTorch)."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A folder that is not a readable checkpoint, or tensors that do not fit a model."""


def read_config(path: str) -> dict:
    """The folder's `config.json`; CheckpointError if `path` is not a checkpoint folder."""
    if not os.path.isdir(path):
        raise CheckpointError(f"hf:{path}: not a folder")
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise CheckpointError(f"hf:{path}: not a Hugging Face checkpoint (no {CONFIG})")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"hf:{path}/{CONFIG}: cannot read it ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"hf:{path}/{CONFIG}: not a JSON object")
    return config


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the folder's safetensors file(s), by name."""
    files = [WEIGHTS]
    index = os.path.join(path, SHARD_INDEX)
    if not os.path.isfile(os.path.join(path, WEIGHTS)) and os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"hf:{path}: no {name} (only safetensors weights are read)")
        try:
            tensors.update(load_file(file))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"hf:{file}: not a readable safetensors file ({e})") from None
    return tensors


def write(path: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Writes `config.json` and `model.safetensors` into the folder `path` (created)."""
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, CONFIG), config)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(path, WEIGHTS),
              metadata={"format": "pt"})


def write_json(file: str, value: dict) -> None:
    """`value` as indented JSON with sorted keys, as transformers writes its files."""
    with open(file, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
