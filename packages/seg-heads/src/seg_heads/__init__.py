"""seg_heads (PKUSeg): faithful PSPNet, DeepLabV3, DenseASPP and FCN heads and the model.

```python
from seg_heads import create_model
model = create_model("pspnet", backbone="resnet101_deep", num_classes=19, output_stride=8, aux=True)
out = model(x)   # {"out": N x 19 x H x W, "aux": N x 19 x H x W}
```
"""

from . import aspp as _aspp  # noqa: F401  (each head file registers its model)
from . import bisenetv2 as _bisenetv2  # noqa: F401
from . import ddrnet as _ddrnet  # noqa: F401
from . import denseaspp as _denseaspp  # noqa: F401
from . import fast_scnn as _fast_scnn  # noqa: F401
from . import fcn as _fcn  # noqa: F401
from . import fpn as _fpn  # noqa: F401
from . import lraspp as _lraspp  # noqa: F401
from . import mask2former as _mask2former  # noqa: F401
from . import ocr as _ocr  # noqa: F401
from . import pidnet as _pidnet  # noqa: F401
from . import psp as _psp  # noqa: F401
from . import segformer as _segformer  # noqa: F401
from . import sep_aspp as _sep_aspp  # noqa: F401
from . import stdc as _stdc  # noqa: F401
from . import uper as _uper  # noqa: F401
from ._layers import check_in_index
from ._registry import list_models, register_head, tiny_config
from .aspp import ASPPHead
from .denseaspp import DenseASPPHead
from .fcn import FCNHead
from .model import CAFFE_BGR, IMAGENET_RGB, SegmentationModel, create_model
from .psp import PSPHead

__all__ = [
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "ASPPHead",
    "DenseASPPHead",
    "FCNHead",
    "PSPHead",
    "SegmentationModel",
    "check_in_index",
    "create_model",
    "list_models",
    "register_head",
    "tiny_config",
]
