"""Checks of a config's values, run before any data is read or anything is compiled.

Rules go by field name wherever the field sits, so every experiment gets them: each
failure is a ValueError naming the field (`config.optimizer.learning_rate: ...`).
"""

from __future__ import annotations

import numbers

from ml_transformer.decode import PENALTIES

DTYPES = ("float32", "bfloat16", "float16")
ZERO_ALLOWED = ("warmup_steps", "grad_clip_norm", "weight_decay", "mixup_alpha", "crop_padding",
                "final_examples", "extra_len", "seed", "batch_tokens", "samples", "min_len", "alpha",
                "temperature", "top_k", "guidance_scale")


def validate(config) -> None:
    """Raises ValueError naming the first field whose value cannot work."""
    for path, value in _leaves(config):
        _check_field(path, path.rsplit(".", 1)[-1], value)
    model = config.get("model") or {}
    if not model.get("variant") and {"d_model", "num_heads"} <= set(model.keys()):
        if model.d_model % model.num_heads:
            raise ValueError(f"config.model.num_heads={model.num_heads}: must divide "
                             f"config.model.d_model={model.d_model} (d_k = d_model / h)")
    decode = config.get("decode") or {}
    if "length_penalty" in decode and decode.length_penalty not in PENALTIES:
        raise ValueError(f"config.decode.length_penalty={decode.length_penalty!r}: not one of {', '.join(PENALTIES)}")
    if "alphas" in decode and (not decode.alphas or any(not isinstance(a, numbers.Real) or a < 0 for a in decode.alphas)):
        raise ValueError(f"config.decode.alphas={decode.alphas}: must be one or more numbers >= 0")
    if config.get("best_metric") == "":
        raise ValueError("config.best_metric: empty; name a validation metric, e.g. accuracy or bleu")


def _check_field(path: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Number, str)):
        return
    if name == "dtype" and value not in DTYPES:
        raise ValueError(f"config.{path}={value!r}: not one of {', '.join(DTYPES)}")
    if not isinstance(value, numbers.Number):
        return
    if name.endswith("dropout_rate") or name in ("label_smoothing", "b1", "b2"):
        if not 0 <= value < 1:
            raise ValueError(f"config.{path}={value}: must be in [0, 1)")
    elif name in ("character_coverage", "top_p"):
        if not 0 < value <= 1:
            raise ValueError(f"config.{path}={value}: must be in (0, 1]")
    elif name in ZERO_ALLOWED:
        if value < 0:
            raise ValueError(f"config.{path}={value}: must not be negative")
    elif name in ("learning_rate", "eps", "batch_size", "keep_checkpoints", "micro_batches", "vocab_size",
                  "max_len", "d_model", "d_ff", "num_heads", "image_size", "patch_size", "beam_size", "tune_examples",
                  "max_new_tokens", "num_samples", "length_multiple") or name.endswith(("_steps", "_layers")):
        if value <= 0:
            raise ValueError(f"config.{path}={value}: must be positive")


def _leaves(config, prefix: str = ""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def set_fields(section, *names: str) -> dict:
    """The fields among `names` that a config section (e.g. `config.model`) sets: the
    switches that older config files lack keep their defaults."""
    return {name: section[name] for name in names if name in section}
