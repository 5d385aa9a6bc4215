"""Palette helpers."""

from __future__ import annotations

import numpy as np

__all__ = ["voc_colormap"]


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: class ``i`` gets the colour whose bits interleave ``i``'s bits.

    ``voc_colormap()[15]`` is (192, 128, 128) (person). Used by VOC's palette PNGs and, here,
    for ADE20K, Pascal Context and folder datasets without their own colours.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap
