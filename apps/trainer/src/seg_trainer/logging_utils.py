"""Run logs: ``<output_dir>/log.jsonl`` (always) and TensorBoard (when installed and enabled).

Each JSON line is one record: training lines
``{"type": "train", "iter": int, "loss": float, "lr": float, ...}`` and evaluation lines
``{"type": "val", "iter": int, "mIoU": float, "mAcc": float, "aAcc": float}``. A
resumed run appends to the same file; readers keep the last record per
``(type, iter)``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


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
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
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
        self._file.close()
        if self.tb is not None:
            self.tb.close()
