"""Turn peer checkpoints (torchvision, mmsegmentation, HuggingFace) into ready PKUSeg models.

```python
from seg_heads.convert import from_hf, from_mmseg, from_torchvision
model = from_torchvision("deeplabv3_resnet50.pth", arch="deeplabv3_resnet50")
model = from_mmseg("pspnet_r50-d8_512x1024_40k_cityscapes.pth", arch="pspnet_r50-d8")
model = from_hf("segformer-b0-finetuned-ade-512-512/")
model(x)["out"]   # the peer's logits on the same (already normalised) input
```

One module per source (``torchvision``, ``mmseg``, ``hf``), each with a table of the
architectures it converts; a family registers its entries beside its key mapping.
Every converted model is built by :func:`seg_heads.create_model` and carries
``model.build_config`` (``create_model(**build_config)`` rebuilds the architecture)
and ``model.input_norm`` (the normalisation the weights expect). ``num_classes``,
the auxiliary head and the head widths are read from the weights; what the weights
cannot tell (atrous rates, ``align_corners``) comes from ``arch`` and the arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..model import SegmentationModel

# family converters register their archs on import
from . import _bisenetv2 as _bisenetv2
from . import _ddrnet as _ddrnet
from . import _fast_scnn as _fast_scnn
from . import _hrnet as _hrnet
from . import _lraspp as _lraspp
from . import _mask2former_hf as _mask2former_hf
from . import _pidnet as _pidnet
from . import _segformer as _segformer
from . import _stdc as _stdc
from . import _upernet_hf as _upernet_hf
from ._common import StateDictSource, load_checkpoint
from .hf import HF_ARCHS, from_hf, register_hf_arch
from .mmseg import MMSEG_ARCHS, MMSegArch, from_mmseg, register_mmseg_arch
from .torchvision import TORCHVISION_ARCHS, from_torchvision

__all__ = [
    "HF_ARCHS",
    "MMSEG_ARCHS",
    "TORCHVISION_ARCHS",
    "MMSegArch",
    "convert",
    "from_hf",
    "from_mmseg",
    "from_torchvision",
    "load_checkpoint",
    "register_hf_arch",
    "register_mmseg_arch",
]

_CONVERTERS: dict[str, Callable[..., SegmentationModel]] = {
    "torchvision": from_torchvision,
    "mmseg": from_mmseg,
}


def convert(src: StateDictSource, *, source: str, arch: str, **kwargs: Any) -> SegmentationModel:
    """Dispatch to ``from_<source>``: ``convert(path, source="mmseg", arch="pspnet_r50-d8")``.

    ``source`` is ``"torchvision"`` or ``"mmseg"``; ``kwargs`` go to that converter
    (``align_corners`` for mmseg). HuggingFace directories: :func:`from_hf`.
    """
    try:
        fn = _CONVERTERS[source]
    except KeyError:
        raise KeyError(
            f"unknown checkpoint source {source!r}; valid: {sorted(_CONVERTERS)} "
            "(HuggingFace directories: seg_heads.convert.from_hf)"
        ) from None
    return fn(src, arch=arch, **kwargs)
