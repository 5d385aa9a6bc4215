"""The errors ``seg-train``, ``seg-eval``, ``seg-infer`` and ``seg-export`` report, and their exit codes.

Every documented error reaches the user as one clear line (``seg-train: <kind>: <message>``)
and an exit code of its own, never a traceback; ``--debug`` re-raises it with the
traceback. Anything else is a bug and keeps Python's traceback (exit code 1).

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     a bug (Python traceback); seg-infer never uses it for bad inputs
2     config error: bad YAML or key (named), a file named on the command line is missing
3     checkpoint error: corrupt, foreign or unfitting checkpoint; an output_dir that
      holds checkpoints without --resume/--overwrite; --resume must without checkpoint
4     training diverged: loss or weights not finite (the message names the last
      finite checkpoint)
5     data error: a dataset file is missing, corrupt, unsupported (float images) or
      holds invalid labels (the message names the file); seg-infer: some inputs failed
6     output_dir busy: another run holds its lock (the message names its pid)
7     storage error: output_dir not writable, too little free space, a write failed
8     evaluation failed: training finished and every checkpoint is in place, but the
      final (or a periodic) evaluation failed; or the model produced NaN logits
9     missing dependency: an optional package is not installed, e.g. ``--backend
      onnxruntime|openvino`` or ``seg-export --format onnx`` without onnx / onnxruntime /
      openvino (the message names the ``pip install 'seg-trainer[deploy]'``)
10    export failed (seg-export): the model cannot be exported, or the export does not
      reproduce PyTorch within the tolerance (the message names the op)
75    stopped by SIGTERM/SIGINT: the current step finished and a checkpoint was
      written; continue with ``--resume auto`` (75 = EX_TEMPFAIL, "try again")
130   a second SIGINT (Ctrl-C): stopped at once, nothing saved after the last checkpoint
143   a second SIGTERM: killed at once by the default action (the shell shows 143)
====  ==========================================================================
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "EXIT_CHECKPOINT",
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_DIVERGED",
    "EXIT_EVALUATION",
    "EXIT_EXPORT",
    "EXIT_INTERRUPTED",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_OUTPUT_BUSY",
    "EXIT_STORAGE",
    "EvaluationFailed",
    "MissingDependency",
    "OutputDirBusy",
    "StorageError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "exit_code",
    "report_errors",
]

EXIT_CONFIG = 2
EXIT_CHECKPOINT = 3
EXIT_DIVERGED = 4
EXIT_DATA = 5
EXIT_OUTPUT_BUSY = 6
EXIT_STORAGE = 7
EXIT_EVALUATION = 8
EXIT_MISSING_DEPENDENCY = 9
EXIT_EXPORT = 10
EXIT_INTERRUPTED = 75
EXIT_SIGINT = 130


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/inf; the message names the last finite checkpoint."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT stopped the run after its current step, with a checkpoint written."""

    def __init__(self, message: str, *, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class OutputDirBusy(RuntimeError):
    """Another live process holds the lock of this ``output_dir``."""


class StorageError(OSError):
    """``output_dir`` cannot be written: permissions, free space, a failed write."""


class EvaluationFailed(RuntimeError):
    """An evaluation failed; during training every checkpoint written so far is intact."""


class MissingDependency(ImportError):
    """An optional package a command needs is not installed; the message says what to install."""


def _kinds() -> list[tuple[type[BaseException], int, str]]:
    """(exception class, exit code, label) in matching order (most specific first)."""
    from seg_data import DatasetError
    from seg_heads.export import ExportError

    from .checkpoint import CheckpointError
    from .config import ConfigError

    return [
        (TrainingInterrupted, EXIT_INTERRUPTED, "stopped"),
        (MissingDependency, EXIT_MISSING_DEPENDENCY, "missing dependency"),
        (ExportError, EXIT_EXPORT, "export failed"),
        (TrainingDiverged, EXIT_DIVERGED, "training diverged"),
        (EvaluationFailed, EXIT_EVALUATION, "evaluation failed"),
        (OutputDirBusy, EXIT_OUTPUT_BUSY, "output_dir busy"),
        (StorageError, EXIT_STORAGE, "storage error"),
        (CheckpointError, EXIT_CHECKPOINT, "checkpoint error"),
        (ConfigError, EXIT_CONFIG, "config error"),
        (DatasetError, EXIT_DATA, "data error"),  # before FileNotFoundError: MissingFileError
        (FileNotFoundError, EXIT_CONFIG, "error"),
    ]


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, label)`` of a documented error, ``None`` for anything else (a bug)."""
    for cls, code, label in _kinds():
        if isinstance(exc, cls):
            return code, label
    return None


@contextmanager
def _plain_warnings(prog: str) -> Iterator[None]:
    """Format warnings as ``prog: warning: message`` lines (no file:line and source echo)."""
    previous = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        return f"{prog}: warning: {message}\n"

    warnings.formatwarning = fmt  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


def report_errors(prog: str, run: Callable[[], int], *, debug: bool = False) -> int:
    """Call ``run()`` and turn documented errors into one stderr line and their exit code.

    ``debug=True`` lets every exception through with its traceback.
    """
    if debug:
        return run()
    with _plain_warnings(prog):
        try:
            return run()
        except KeyboardInterrupt as exc:
            print(f"{prog}: {exc or 'interrupted (Ctrl-C): stopped at once'}", file=sys.stderr)
            return EXIT_SIGINT
        except Exception as exc:
            known = exit_code(exc)
            if known is None:
                raise
            code, label = known
            print(f"{prog}: {label}: {exc}", file=sys.stderr)
            return code
