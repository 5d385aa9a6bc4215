"""Run seg-train / seg-eval / seg-infer in a real process with the tiny test backbone.

    python tests/reliability/_tool.py seg-train --config CONFIG --cpu ...

Test hooks (this file only, never in the product):

* ``RELIABILITY_SLOW_SAVE=<path>``: each checkpoint save writes its temporary file,
  touches ``<path>`` and sleeps, so a test can SIGKILL the process in the middle of a save;
* ``RELIABILITY_MEMORY_MB=<n>``: once the tool is imported, the address space may grow by
  ``n`` MB more (``RLIMIT_AS``): allocations beyond fail, as on a machine that is full;
* ``RELIABILITY_FILE_LIMIT=<bytes>``: no file may grow beyond that (``RLIMIT_FSIZE``, with
  SIGXFSZ ignored): writes fail like on a full disk.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tinynet  # noqa: F401  (registers the backbone)


def _slow_saves(marker: str) -> None:
    import torch

    real = torch.save

    def save_then_hang(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        f.flush()
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)

    torch.save = save_then_hang


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _limits() -> None:
    import resource
    import signal

    if os.environ.get("RELIABILITY_MEMORY_MB"):
        import seg_trainer.infer  # noqa: F401  (imported before the limit is set)

        extra = int(os.environ["RELIABILITY_MEMORY_MB"]) * 2**20
        limit = _vm_kb("VmSize") * 1024 + extra
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if os.environ.get("RELIABILITY_FILE_LIMIT"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        size = int(os.environ["RELIABILITY_FILE_LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def main() -> None:
    tool, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("RELIABILITY_SLOW_SAVE"):
        _slow_saves(os.environ["RELIABILITY_SLOW_SAVE"])
    _limits()
    if os.environ.get("RELIABILITY_REPORT_VM"):
        import atexit

        start = _vm_kb("VmSize")
        atexit.register(lambda: print(f"VM growth {(_vm_kb('VmPeak') - start) // 1024} MB",
                                      file=sys.stderr))  # fmt: skip
    if tool == "seg-train":
        from seg_trainer.train import main as train_main

        sys.exit(train_main(args))
    if tool == "seg-eval":
        from seg_trainer.evaluate import cli

        cli(args)
    if tool == "seg-infer":
        from seg_trainer.infer import cli

        cli(args)
    raise SystemExit(f"unknown tool {tool!r}")


if __name__ == "__main__":
    main()
