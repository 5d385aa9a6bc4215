"""Write ``seg_heads.convert.MMSEG_ARCHS`` as JSON (the parity session's list of what to check).

Usage: ``python dump_mmseg_archs.py OUT.json`` (in an environment with seg-heads installed).
Each entry: arch name -> {"config", "input_size", "align_corners"} of its MMSegArch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seg_heads.convert import MMSEG_ARCHS


def specs() -> dict[str, dict[str, object]]:
    return {
        name: {
            "config": spec.config,
            "input_size": [int(s) for s in spec.input_size],
            "align_corners": bool(spec.align_corners),
        }
        for name, spec in sorted(MMSEG_ARCHS.items())
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(specs(), indent=1))
    print(f"{len(MMSEG_ARCHS)} mmseg archs -> {out}: {', '.join(sorted(MMSEG_ARCHS))}")
