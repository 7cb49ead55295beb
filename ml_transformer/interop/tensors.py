"""Named tensor mappings between a Hugging Face checkpoint and our parameters.

A `Rule` ties one of our parameters (a '/'-joined path) to one tensor of the checkpoint
and says how the layouts differ. `to_ours` converts a checkpoint's tensors, refusing a
missing, unexpected or misshapen tensor with one line naming it; `to_theirs` is its exact
inverse, for export.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

import numpy as np
from flax import traverse_util

from ml_transformer.interop.folder import CheckpointError


def _heads_in_to_ours(w, shape):  # torch Linear [H·D, d] → DenseGeneral [d, H, D] (bias [H·D] → [H, D])
    return w.T.reshape(shape)


def _heads_in_to_theirs(w):
    return w.reshape(w.shape[0], -1).T if w.ndim == 3 else w.reshape(-1)


def _heads_out_to_ours(w, shape):  # torch Linear [d, H·D] → DenseGeneral [H, D, d]
    return w.T.reshape(shape)


def _heads_out_to_theirs(w):
    return w.reshape(-1, w.shape[-1]).T


def _patches_to_ours(w, shape):  # Conv2d [d, C, P, P] → Dense [P·P·C, d] over (row, column, channel)
    return w.transpose(2, 3, 1, 0).reshape(shape)


def _patches_to_theirs(w, channels: int):
    size = int(round((w.shape[0] / channels) ** 0.5))
    return w.reshape(size, size, channels, -1).transpose(3, 2, 0, 1)


def _vocab_to_ours(w, shape):
    """Their vocabulary axis (the first; the last of a [1, V] logits bias) with id 0 made
    padding, as ours is: their id i becomes ours (i + 1) mod V. A checkpoint whose
    vocabulary ends with its padding token keeps V entries; one with no padding token
    gains a zero entry, ours 0."""
    axis = 0 if len(shape) == 2 else -1
    w = w.reshape(-1, w.shape[-1]) if len(shape) == 2 else w.reshape(-1)
    if w.shape[axis] == shape[axis] - 1:
        w = np.concatenate([w, np.zeros_like(w[:1] if axis == 0 else w[:1])], axis=axis)
    return np.roll(w, 1, axis=axis)


def shifted_to_theirs(w, size: int, axis: int = 0):
    """Inverse of `_vocab_to_ours` for a checkpoint vocabulary of `size` entries."""
    w = np.roll(w, -1, axis=axis)
    return w[:size] if axis == 0 else w[..., :size]


# kind → (to ours given our shape, to theirs); "linear" is a torch Linear's [out, in] weight.
_KINDS = {
    "copy": (lambda w, shape: w.reshape(shape), None),
    "linear": (lambda w, shape: w.T, lambda w: w.T),
    "heads_in": (_heads_in_to_ours, _heads_in_to_theirs),
    "heads_out": (_heads_out_to_ours, _heads_out_to_theirs),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: str  # e.g. 'encoder/layers_0/self_attention/query/kernel'
    theirs: str  # e.g. 'encoder.layer.0.attention.self.query.weight'
    kind: str = "copy"  # a key of _KINDS, 'patches:C' (a Conv2d patch embedding over C channels),
    # 'vocab:V' (their V-entry vocabulary axis with their ids shifted by one: `_vocab_to_ours`) or
    # 'fused:I/N' (slice I of N equal slices of their last axis, copied: GPT-2's query/key/value in c_attn)
    their_shape: tuple | None = None  # for 'copy' of a tensor with another rank (e.g. ViT's [1, 1, d] class
    # token) and for the slice of a 'fused' tensor

    def to_ours(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        if self.kind.startswith("patches:"):
            return _patches_to_ours(w, shape)
        if self.kind.startswith("vocab:"):
            return _vocab_to_ours(w, shape)
        if self.kind.startswith("fused:"):
            return np.split(w, self.parts[1], axis=-1)[self.parts[0]].reshape(shape)
        return _KINDS[self.kind][0](w, shape)

    @property
    def parts(self) -> tuple[int, int]:
        """(I, N) of a 'fused:I/N' rule."""
        index, _, count = self.kind.partition(":")[2].partition("/")
        return int(index), int(count)

    def full_shape(self, shape: tuple) -> tuple:
        """The shape of their tensor for our parameter of `shape` (all N slices of a 'fused' one)."""
        part = self.to_theirs(np.zeros(shape, np.int8)).shape
        return (*part[:-1], part[-1] * self.parts[1]) if self.kind.startswith("fused:") else part

    def to_theirs(self, w: np.ndarray) -> np.ndarray:
        kind, _, size = self.kind.partition(":")
        if kind == "patches":
            return _patches_to_theirs(w, int(size))
        if kind == "vocab":
            out = shifted_to_theirs(w, int(size), axis=0 if w.ndim == 2 else -1)
            return out.reshape(self.their_shape or out.shape)
        if self.kind == "copy" or kind == "fused":
            return w.reshape(self.their_shape) if self.their_shape else w
        return _KINDS[self.kind][1](w)


def flat(params) -> dict[str, np.ndarray]:
    """Our parameter tree as {'a/b/c': array}."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


def nested(flat_params: dict) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat_params.items()})


def to_ours(rules: Iterable[Rule], tensors: dict[str, np.ndarray], shapes: dict[str, tuple], source: str,
            left_out: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], list[str]]:
    """Our parameters `{path: array}` from a checkpoint's `tensors`, for a model whose
    parameter shapes are `shapes` `{path: shape}`; the rules may cover only some of them.

    Returns (the parameters, the names of the checkpoint tensors in `left_out` — prefixes
    or glob patterns of tensors our model has no place for, e.g. a pooler or `h.*.attn.bias`
    — that were present). Raises CheckpointError naming the first tensor that is missing,
    unexpected, or of a shape that does not fit the config.
    """
    params, used = {}, set()
    for rule in rules:
        if rule.theirs not in tensors:
            raise CheckpointError(f"{source}: missing tensor {rule.theirs!r} (for our {rule.ours})")
        w = tensors[rule.theirs]
        expected = rule.full_shape(shapes[rule.ours])
        if w.shape != expected:
            raise CheckpointError(f"{source}: tensor {rule.theirs!r} has shape {w.shape}, the config gives {expected}")
        params[rule.ours] = np.asarray(rule.to_ours(w, shapes[rule.ours]), np.float32)
        used.add(rule.theirs)
    left_out = tuple(left_out)
    dropped = sorted(n for n in tensors if n not in used
                     and any(n.startswith(p) or fnmatch.fnmatchcase(n, p) for p in left_out))
    unexpected = sorted(set(tensors) - used - set(dropped))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r} {tensors[unexpected[0]].shape}"
                              f" ({len(unexpected)} in all); the config has no place for it")
    return params, dropped


def to_theirs(rules: Iterable[Rule], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint tensors of our parameters `{path: array}` (inverse of `to_ours`)."""
    out, slices = {}, {}
    for rule in rules:
        w = np.asarray(rule.to_theirs(np.asarray(params[rule.ours], np.float32)))
        if rule.kind.startswith("fused:"):
            slices.setdefault(rule.theirs, {})[rule.parts[0]] = w
        else:
            out[rule.theirs] = w
    out.update({name: np.concatenate([s[i] for i in sorted(s)], axis=-1) for name, s in slices.items()})
    return out


def encoder_layer_rules(ours: str, theirs: str, names: dict[str, str]) -> list[Rule]:
    """The rules of one of our encoder (or decoder) blocks at `ours` for a layer at
    `theirs`: `names` maps our sublayer names (query, key, value, out, ff_in, ff_out, and
    the LayerNorms' residual_attention, residual_ff, ...) to theirs."""
    rules = []
    for sub, kind in (("query", "heads_in"), ("key", "heads_in"), ("value", "heads_in"), ("out", "heads_out")):
        for attention, prefix in _attention_prefixes(names, sub):
            rules += [Rule(f"{ours}/{attention}/{sub}/kernel", f"{theirs}.{prefix}.weight", kind),
                      Rule(f"{ours}/{attention}/{sub}/bias", f"{theirs}.{prefix}.bias",
                           "heads_in" if kind == "heads_in" else "copy")]
    for sub, dense in (("ff_in", "Dense_0"), ("ff_out", "Dense_1")):
        rules += [Rule(f"{ours}/feed_forward/{dense}/kernel", f"{theirs}.{names[sub]}.weight", "linear"),
                  Rule(f"{ours}/feed_forward/{dense}/bias", f"{theirs}.{names[sub]}.bias")]
    for norm in ("residual_attention", "residual_self", "residual_cross", "residual_ff"):
        if norm in names:
            rules += [Rule(f"{ours}/{norm}/LayerNorm_0/scale", f"{theirs}.{names[norm]}.weight"),
                      Rule(f"{ours}/{norm}/LayerNorm_0/bias", f"{theirs}.{names[norm]}.bias")]
    return rules


def _attention_prefixes(names: dict[str, str], sub: str) -> list[tuple[str, str]]:
    """(our attention module, their projection's prefix) for each attention of a block."""
    return [(attention, names[f"{attention}.{sub}"]) for attention in ("self_attention", "cross_attention")
            if f"{attention}.{sub}" in names]


def layer_norm_rules(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}/scale", f"{theirs}.weight"), Rule(f"{ours}/bias", f"{theirs}.bias")]
