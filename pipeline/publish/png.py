"""Bar charts as PNG images, drawn with numpy and encoded with zlib: no plotting library.

The dataset card on the Hub shows images, not inline SVG, so `ftprep push` needs a PNG of the
perplexity histogram that `ftprep report` draws as SVG. Labels use a 3x5 pixel font that
covers what the labels hold (digits and the decimal point).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

WHITE = (255, 255, 255)
INK = (51, 51, 51)
BAR = (0x4C, 0x78, 0xA8)  # the report's perplexity bars
MARKER = (0xD6, 0x27, 0x28)  # the report's threshold line

GLYPHS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ".": ("0", "0", "0", "0", "1"),
}


def text_mask(text: str, scale: int = 2) -> np.ndarray:
    """Boolean pixels of `text` (characters outside GLYPHS are left out), one blank column between glyphs."""
    glyphs = [np.array([[bit == "1" for bit in row] for row in GLYPHS[char]]) for char in text if char in GLYPHS]
    if not glyphs:
        return np.zeros((5 * scale, 0), dtype=bool)
    spaced = [part for glyph in glyphs for part in (glyph, np.zeros((5, 1), dtype=bool))][:-1]
    return np.kron(np.hstack(spaced), np.ones((scale, scale), dtype=bool)).astype(bool)


def stamp(image: np.ndarray, mask: np.ndarray, x: int, y: int, color) -> None:
    """Paint `mask` onto `image` with its top-left corner at (x, y), clipped to the image."""
    height, width = mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, image.shape[1]), min(y + height, image.shape[0])
    if x1 > x0 and y1 > y0:
        image[y0:y1, x0:x1][mask[y0 - y : y1 - y, x0 - x : x1 - x]] = color


def bar_chart(counts, labels, marker_at: float | None = None, width: int = 640, height: int = 240) -> np.ndarray:
    """An RGB bar chart (height x width x 3, uint8): one bar per count, its label below it, the
    largest count at the top left, and a dashed vertical line at bar position `marker_at`."""
    counts = np.asarray(counts, dtype=float)
    left, right, top, bottom = 48, 10, 20, 24
    image = np.full((height, width, 3), WHITE, dtype=np.uint8)
    slot = (width - left - right) / max(len(counts), 1)
    tallest = counts.max() if len(counts) and counts.max() > 0 else 1.0
    bar_heights = np.round((height - top - bottom) * counts / tallest).astype(int)

    # Which bar each pixel column belongs to, with a 2-pixel gap on either side of every bar.
    columns = np.arange(width)
    bar = np.floor((columns - left) / slot).astype(int)
    within = (columns - left) - bar * slot
    in_bar = (columns >= left) & (bar < len(counts)) & (within >= 2) & (within < slot - 2)
    baseline = height - bottom
    bar_top = np.where(in_bar, baseline - bar_heights[np.clip(bar, 0, max(len(counts) - 1, 0))], baseline)
    rows = np.arange(height)[:, None]
    image[(rows >= bar_top[None, :]) & (rows < baseline)] = BAR

    image[baseline, left : width - right] = INK
    for index, label in enumerate(labels):
        mask = text_mask(str(label))
        stamp(image, mask, int(left + (index + 0.5) * slot - mask.shape[1] / 2), baseline + 6, INK)
    stamp(image, text_mask(str(int(tallest))), 4, top, INK)
    if marker_at is not None:
        x = int(round(left + marker_at * slot))
        dashes = (np.arange(top - 8, baseline) // 5) % 2 == 0
        image[np.arange(top - 8, baseline)[dashes], max(x - 1, 0) : x + 1] = MARKER
    return image


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 image (height x width x 3) as a PNG file."""
    height, width, _ = rgb.shape
    # Every scanline starts with its filter type; 0 (none) keeps the encoder trivial, and
    # zlib still packs a flat-coloured plot to a few kilobytes.
    scanlines = np.hstack([np.zeros((height, 1), dtype=np.uint8), np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
