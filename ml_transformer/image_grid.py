"""Writing generated images as one PNG grid."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def write_grid(images: np.ndarray, path: str, zoom: int = 8, gap: int = 2) -> str:
    """Writes uint8 grey images `[rows, columns, H, W, 1]` as a PNG grid, each pixel
    `zoom` x `zoom`, the images `gap` pixels apart on white; returns `path`."""
    rows, columns, height, width = images.shape[:4]
    cell_h, cell_w = height * zoom + gap, width * zoom + gap
    canvas = np.full((rows * cell_h + gap, columns * cell_w + gap), 255, np.uint8)
    big = images[..., 0].repeat(zoom, axis=2).repeat(zoom, axis=3)
    for r in range(rows):
        for c in range(columns):
            top, left = gap + r * cell_h, gap + c * cell_w
            canvas[top:top + height * zoom, left:left + width * zoom] = 255 - big[r, c]  # dark ink on white
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
