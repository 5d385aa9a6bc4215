"""seg_metrics: exact, fast, distributed-correct semantic-segmentation metrics (PKUSeg).

>>> from seg_metrics import ConfusionMatrix
>>> cm = ConfusionMatrix(num_classes=19, ignore_index=255)
>>> cm.update(pred_or_logits, target); cm.all_reduce(); res = cm.compute()
>>> res.miou, res.macc, res.aacc, res.fwiou, res.mdice, res.iou
"""

from .confusion import ConfusionMatrix
from .result import SegmentationResult

__all__ = ["ConfusionMatrix", "SegmentationResult"]
__version__ = "0.1.0"
