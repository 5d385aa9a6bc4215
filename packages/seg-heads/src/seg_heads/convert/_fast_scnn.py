"""mmsegmentation Fast-SCNN checkpoints (``fast_scnn``).

mmseg's ``EncoderDecoder`` keys: ``backbone.*`` (mmseg's ``FastSCNN``: our names),
``decode_head.*`` (the ``DepthwiseSeparableFCNHead``: our ``decode_head.head.*``) and, in
training checkpoints, ``auxiliary_head.0.*`` / ``auxiliary_head.1.*`` (the FCN heads on the
global features and on the stride-8 map: our ``decode_head.aux_heads.<i>.*``), built when
present. ``num_classes`` and the head widths are read from the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ._bisenetv2 import BOOSTER_RULES, booster_mmseg, check_aux_count, fcn_width, num_convs
from ._common import require
from .mmseg import MMSegArch, register_mmseg_arch


def _fast_scnn_options(sd: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    if "decode_head.conv_cat.pointwise_conv.conv.weight" in sd:
        raise ValueError(
            f"{where}: decode_head has a conv_cat; mmseg's Fast-SCNN head has concat_input=False"
        )
    pointwise = require(sd, "decode_head.convs.0.pointwise_conv.conv.weight", where)
    aux = check_aux_count(sd, 2, where)
    opts: dict[str, Any] = {
        "channels": int(pointwise.shape[0]),
        "num_convs": num_convs(sd, "decode_head."),
        "aux_heads": bool(aux),
    }
    if aux:
        opts["aux_channels"] = [
            fcn_width(sd, f"auxiliary_head.{i}.", where, n_convs=1) for i in aux
        ]
    return opts


# (225, 321): the stride-8 map is 29x41 and the global features 8x11, so the pyramid pool's
# 2/3/6 bins have uneven windows and every bilinear resize a non-integer ratio.
register_mmseg_arch(
    "fast_scnn",
    MMSegArch(
        booster_mmseg("fast_scnn", "fast_scnn", _fast_scnn_options, rules=BOOSTER_RULES),
        "fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py",
        input_size=(225, 321),
        align_corners=False,
    ),
)
