"""Attention pictures: weights sown by the model's own forward pass, drawn as PNG heatmaps.

Applied with `mutable=['intermediates']`, a model records every attention module's
weights `[B, H, Lq, Lk]` in that collection; `collect` flattens them to
`{'encoder/layers_0/self_attention': array, ...}`.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def collect(intermediates) -> dict[str, np.ndarray]:
    """`{module path: weights [B, H, Lq, Lk]}` from an 'intermediates' collection."""
    found = {}

    def walk(tree, path):
        for key, value in tree.items():
            if key == "attention_weights":
                found["/".join(path)] = np.asarray(value[0])
            elif isinstance(value, dict) or hasattr(value, "items"):
                walk(value, path + [key])

    walk(intermediates, [])
    return found


def pick(weights: dict[str, np.ndarray], kind: str, layer: int, head: int) -> tuple[str, np.ndarray]:
    """(title, `[Lq, Lk]` map) of the `layer`-th module whose path matches `kind` (e.g.
    'encoder/*/self_attention'), for one head or the mean over heads (head = -1).
    Negative layers count from the last; out-of-range values raise ValueError."""
    prefix, suffix = kind.split("*")
    names = sorted((n for n in weights if n.startswith(prefix) and n.endswith(suffix)), key=_layer_number)
    if not names:
        raise ValueError(f"no attention weights for {kind!r} (found {sorted(weights)})")
    if not -len(names) <= layer < len(names):
        raise ValueError(f"--layer={layer}: the model has {len(names)} layers")
    name = names[layer]
    per_head = weights[name][0]
    if not -1 <= head < per_head.shape[0]:
        raise ValueError(f"--head={head}: the model has {per_head.shape[0]} heads (-1 averages them)")
    title = f"{name} head {'mean' if head == -1 else head}"
    return title, (per_head.mean(axis=0) if head == -1 else per_head[head])


def _layer_number(name: str) -> int:
    """The number of a path's `layers_N` part (0 if none)."""
    part = next((p for p in name.split("/") if p.startswith("layers_")), "")
    return int(part.removeprefix("layers_") or 0)


def _path(out_dir: str, index: int, title: str) -> str:
    return os.path.join(out_dir, f"{index}-{title.replace('/', '-').replace(' ', '-')}.png")


def heatmap(title: str, matrix: np.ndarray, rows: list[str], columns: list[str], out_dir: str, index: int) -> str:
    """Writes `matrix` (rows = queries, columns = keys) as a labelled heatmap PNG named
    after input `index` and `title`; returns its path."""
    height = max(3.0, 0.28 * len(rows) + 1.5)
    width = max(4.0, 0.28 * len(columns) + 2.0)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("attends to (keys)")
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save(fig, _path(out_dir, index, title))


def overlay(title: str, patch_map: np.ndarray, image: np.ndarray, out_dir: str, index: int) -> str:
    """Writes `image` `[H, W, C]` beside itself under a `[gh, gw]` patch map, as a PNG
    named after input `index` and `title`; returns its path."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    gray = image[..., 0] if image.shape[-1] == 1 else image
    extent = (0, image.shape[1], image.shape[0], 0)
    for ax in axes:
        ax.imshow(_unit_range(gray), cmap="gray" if gray.ndim == 2 else None, extent=extent)
        ax.axis("off")
    shown = axes[1].imshow(patch_map, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    fig.suptitle(title, fontsize=10)
    axes[0].set_title("image", fontsize=9)
    axes[1].set_title("attention over the patches", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    return _save(fig, _path(out_dir, index, title))


def _unit_range(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    span = float(x.max() - x.min())
    return (x - x.min()) / span if span else np.zeros_like(x)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
