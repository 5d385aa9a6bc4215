"""seg-backbones + seg-heads alone build and run every model: no other PKUSeg package,
torchvision, timm or trainer dependency is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("torchvision", "timm", "seg_data", "seg_metrics", "seg_trainer", "accelerate", "yaml")

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"seg_heads must not import {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import torch

    torch.set_num_threads(1)
    import seg_heads
    import seg_heads.convert  # noqa: F401

    for name in seg_heads.list_models():
        try:
            model = seg_heads.create_model(name, backbone="resnet18", num_classes=3, aux=True)
        except ValueError as e:  # a head with its own auxiliary output (OCRNet)
            assert "already returns its own auxiliary" in str(e), e
            model = seg_heads.create_model(name, backbone="resnet18", num_classes=3)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 33, 41))
        assert out["out"].shape == (1, 3, 33, 41), name
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", seg_heads.list_models())
    """
).format(blocked=BLOCKED)


def test_models_build_and_run_without_other_packages() -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok" in res.stdout
