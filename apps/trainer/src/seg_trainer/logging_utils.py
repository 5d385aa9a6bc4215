"""Run logs: ``<output_dir>/log.jsonl`` (always) and TensorBoard (when installed and enabled).

Each JSON line is one record: training lines
``{"type": "train", "iter": int, "loss": float, "lr": float, ...}`` and evaluation lines
``{"type": "val", "iter": int, "mIoU": float, "mAcc": float, "aAcc": float}``.

The file is append-only: it is never rewritten, so a crash can at worst leave a torn last
line (skipped by readers; the next run starts on a new line). Every run start appends a
marker ``{"type": "start", "iter": N, "resumed_from": path | null}``: records written
before it for iterations after ``N`` belong to a run that was interrupted and redone, and
:func:`read_log` drops them (a fresh start, ``N = 0``, drops everything before it).
Stops are logged as ``{"type": "stop", "iter", "signal", "checkpoint"}`` and failures as
``{"type": "error", "iter", "message"}``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "read_log"]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` that describe the run as it stands (see the module doc).

    Lines that are not JSON (a torn last line of a killed run) are skipped with a warning.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{lineno}: skipping a line that is not JSON", stacklevel=2)
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("type") == "start":
            start = int(rec.get("iter") or 0)
            records = [r for r in records if _iter(r) <= start] if start else []
        records.append(rec)
    return records


def _iter(record: dict[str, Any]) -> int:
    try:
        return int(record.get("iter") or 0)
    except (TypeError, ValueError):
        return 0


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


class RunLogger:
    """Writes JSON lines and, optionally, TensorBoard scalars. Create it on the main process only.

    Args:
        output_dir: the run folder; the log is ``output_dir/log.jsonl``, TensorBoard
            events go to ``output_dir/tensorboard``.
        tensorboard: also write TensorBoard events when ``torch.utils.tensorboard`` works
            (the ``tensorboard`` package is installed); silently off otherwise.
    """

    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = (
            self.path.is_file()
            and self.path.stat().st_size > 0
            and not _ends_with_newline(self.path)
        )
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if torn:  # a killed run left half a line: start on a fresh one
            self._file.write("\n")
        self.tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (with a wall-clock ``time``) and mirror numbers to TensorBoard."""
        record = {k: _clean(v) for k, v in record.items()}
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None and "iter" in record:
            prefix = record.get("type", "misc")
            for key, value in record.items():
                if key in ("type", "iter", "time") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["iter"])
            self.tb.flush()

    def close(self) -> None:
        """Close the files (idempotent)."""
        self._file.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
