"""Stand-in for mmcv's compiled extension ``mmcv._ext``, which mmcv-lite does not ship.

``mmcv.ops`` loads ``mmcv._ext`` at import time, so ``import mmseg.models`` fails on
mmcv-lite. Importing this module first registers an empty module under that name whose
attributes are functions that raise when called: everything imports, the pure-PyTorch
models run unmodified, and a model that really needs a compiled op fails loudly by name.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn


def _missing(name: str) -> Any:
    if name.startswith("__"):  # keep introspection (copy, pickle, inspect) honest
        raise AttributeError(name)

    def op(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(
            f"mmcv._ext.{name}: compiled mmcv op called, but mmcv-lite has no compiled "
            "extension (this model cannot run in the parity reference environment)"
        )

    op.__name__ = name
    return op


if "mmcv._ext" not in sys.modules:
    _ext = types.ModuleType("mmcv._ext", "stand-in for mmcv's compiled ops (see mmcv_ext_stub)")
    _ext.__getattr__ = _missing  # type: ignore[method-assign]  # module-level __getattr__
    sys.modules["mmcv._ext"] = _ext
