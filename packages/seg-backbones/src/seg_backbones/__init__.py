"""seg_backbones (PKUSeg): dilated ResNets with a feature contract and verified weight import.

```python
from seg_backbones import create_backbone, load_pretrained
bb = create_backbone("resnet101_deep", output_stride=8)
feats = bb(x)          # [layer1, layer2, layer3, layer4]
bb.feature_info        # [FeatureInfo(256, 4), (512, 8), (1024, 8), (2048, 8)]
```
"""

from . import bisenetv2 as _bisenetv2  # noqa: F401  (each family file registers its variants)
from . import ddrnet as _ddrnet  # noqa: F401
from . import fast_scnn as _fast_scnn  # noqa: F401
from . import hrnet as _hrnet  # noqa: F401
from . import mit as _mit  # noqa: F401
from . import mobilenetv3 as _mobilenetv3  # noqa: F401
from . import pidnet as _pidnet  # noqa: F401
from . import resnet as _resnet  # noqa: F401
from . import stdc as _stdc  # noqa: F401
from ._features import FeatureInfo
from ._registry import create_backbone, list_backbones, register_backbone
from .norm import FrozenBatchNorm2d
from .pretrained import IncompatibleWeightsError, load_pretrained, read_state_dict
from .resnet import ResNet, convert_state_dict, detect_source

__all__ = [
    "FeatureInfo",
    "FrozenBatchNorm2d",
    "IncompatibleWeightsError",
    "ResNet",
    "convert_state_dict",
    "create_backbone",
    "detect_source",
    "list_backbones",
    "load_pretrained",
    "read_state_dict",
    "register_backbone",
]
