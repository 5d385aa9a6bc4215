"""Exceptions raised by seg_data.

Every error names the file (or folder) and the problem, and where possible the fix.
They subclass the built-in exception a caller would expect, so ``except
FileNotFoundError`` or ``except ValueError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "CorruptFileError",
    "DatasetError",
    "LabelError",
    "MissingFileError",
    "UnsupportedImageError",
]


class DatasetError(Exception):
    """Base class of every seg_data dataset error."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A root, split file, image or label that the layout requires does not exist."""


class CorruptFileError(DatasetError, OSError):
    """A file exists but cannot be decoded (truncated, corrupt or not an image)."""


class LabelError(DatasetError, ValueError):
    """A label does not fit its image or its classes (size mismatch, values out of range)."""


class UnsupportedImageError(DatasetError, ValueError):
    """A readable image whose pixel format PKUSeg refuses to guess (float, 32-bit integer)."""
