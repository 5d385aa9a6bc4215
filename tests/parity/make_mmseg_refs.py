"""Random-weight fp64 references from mmsegmentation 1.2.2 itself (run in the mmseg venv).

Runs with the reference environment's python (mmcv-lite + mmengine + mmsegmentation, see
../shared/docs/REFERENCES.md and ``nox -s parity``), never with PKUSeg installed. For each
architecture: build the mmseg config with random weights, make the check strict (random
norm affines, BatchNorm statistics calibrated on the seeded input then jittered, zero and
constant parameters randomised, classifiers scaled so logits are O(1)), and save the fp32
state dict (an mmseg checkpoint's ``state_dict``), a seeded fp32 input and mmseg's fp64
whole-image logits (``EncoderDecoder.encode_decode``) plus the auxiliary logits.

Batch mode (the parity session)::

    python make_mmseg_refs.py --specs specs.json --cache DIR --manifest manifest.json

``specs.json`` maps arch name -> {"config", "input_size", "align_corners"} (dumped from
``seg_heads.convert.MMSEG_ARCHS``). References are cached in DIR, keyed by the spec, the
mode, this script's sha256 and the mmseg/torch versions; the manifest lists, per arch,
its reference file or the error that prevented it. Per config family (the config's
directory) the arch with the fewest parameters gets a ``full`` reference (forward pass);
the others get ``structure`` references (key shapes and parameter count only), unless
``--full-all``.

One arch by hand (what a converter author runs)::

    python make_mmseg_refs.py --arch NAME --config deeplabv3plus/...py --size 321 321 --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mmcv_ext_stub  # noqa: E402, F401  (registers mmcv._ext before mmcv is imported)
import mmengine  # noqa: E402
import mmseg  # noqa: E402
import mmseg.models  # noqa: E402  (fills the MODELS registry)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

CONFIGS = Path(mmseg.__file__).resolve().parent / ".mim" / "configs"
SCRIPT_SHA = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
SYNC_BN = {"SyncBN", "MMSyncBN", "BN2d", "NaiveSyncBN"}
LOGIT_STD = 3.0  # target std of the random logits (O(1-10): 1e-6 stays a strict bound)
PRUNE_AFTER_S = 14 * 86400  # cached references unused this long are deleted


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _sanitize(node: Any) -> None:
    """SyncBN -> BN in every ``norm_cfg``; ``pretrained`` and ``init_cfg`` -> None."""
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if key in ("pretrained", "init_cfg"):
                node[key] = None
            elif key == "norm_cfg" and isinstance(value, dict) and value.get("type") in SYNC_BN:
                value["type"] = "BN"
            else:
                _sanitize(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _sanitize(item)


def build(config: str, *, init: bool = True) -> nn.Module:
    """mmseg's model for ``config`` (relative to mmseg/.mim/configs), default-initialised."""
    path = CONFIGS / config
    if not path.is_file():
        raise FileNotFoundError(f"mmseg {mmseg.__version__} has no config {config!r} in {CONFIGS}")
    register_all_modules(init_default_scope=True)  # mmseg's registries (data preprocessor)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor
    cfg = Config.fromfile(str(path))
    _sanitize(cfg.model)
    model = MODELS.build(cfg.model)
    if init:
        model.init_weights()
    return model


def _build_shapes_only(config: str) -> nn.Module:
    """The model's structure, on the meta device where its constructor allows (fast)."""
    try:
        with torch.device("meta"):
            return build(config, init=False)
    except (RuntimeError, NotImplementedError):  # e.g. MiT's linspace(...).item()
        return build(config, init=False)


def _classifiers(model: nn.Module) -> list[nn.Conv2d]:
    return [
        m.conv_seg for m in model.modules() if isinstance(getattr(m, "conv_seg", None), nn.Conv2d)
    ]


@torch.no_grad()
def randomize(model: nn.Module, x: Tensor, seed: int) -> None:
    """Make every parameter and statistic non-trivial, keeping activations O(1).

    Norm affines: weight U(0.5, 1.5), bias N(0, 0.2). Other all-zero parameters:
    U(-0.1, 0.1); other constant ones: times U(0.5, 1.5). Then one eval-mode pass on the
    input ``x`` sets, in forward order, each BatchNorm's running statistics to those of its
    actual input (per channel; over the whole tensor where a channel has under 32 values,
    e.g. after global pooling; the variance floored at a tenth of the second moment), the
    mean shifted by N(0, 0.1) std and the variance scaled by U(0.7, 1.3), and redraws each
    classifier (``conv_seg``) so that its logits have std ~LOGIT_STD. Calibrating on the
    checked input itself keeps the logits O(1) however input-specific a layer's statistics
    are (OCR's object context is nearly constant over one image); the jitter keeps them
    different from batch statistics, so a model normalising with those would fail.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, lo: float, hi: float) -> Tensor:
        return torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo

    normed: set[int] = set()
    for m in model.modules():
        if isinstance(m, NORMS) and getattr(m, "weight", None) is not None:
            m.weight.copy_(uniform(m.weight, 0.5, 1.5))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            normed |= {id(m.weight), id(m.bias)}
    for p in model.parameters():
        if id(p) in normed or p.numel() == 0:
            continue
        if bool((p == 0).all()):
            p.copy_(uniform(p, -0.1, 0.1))
        elif p.numel() > 1 and bool((p == p.flatten()[0]).all()):
            p.copy_(p * uniform(p, 0.5, 1.5))

    done: set[int] = set()

    def calibrate_bn(m: _BatchNorm, args: tuple[Tensor, ...]) -> None:
        if id(m) in done:
            return
        done.add(id(m))
        x = args[0].transpose(0, 1).reshape(args[0].shape[1], -1)  # C x (N * spatial)
        if x.shape[1] >= 32:
            mean, var = x.mean(1), x.var(1)
        else:
            mean, var = x.mean().expand(x.shape[0]), x.var().expand(x.shape[0])
        # A channel can barely vary over one image (OCR's object context is nearly constant
        # over space): the floor keeps such normalised outputs O(1), not O(1 / eps).
        var = torch.maximum(var, 0.1 * (var + mean.pow(2))).clamp_min(1e-3)
        m.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(mean.shape, generator=g))
        m.running_var.copy_(var * uniform(var, 0.7, 1.3))

    def scale_classifier(c: nn.Conv2d, args: tuple[Tensor, ...]) -> None:
        if id(c) in done:
            return
        done.add(id(c))
        power = float(args[0].pow(2).mean().clamp_min(1e-12))
        sigma = LOGIT_STD / (c.weight[0].numel() * power) ** 0.5
        c.weight.copy_(torch.randn(c.weight.shape, generator=g) * sigma)
        if c.bias is not None:
            c.bias.copy_(torch.randn(c.bias.shape, generator=g) * 0.1 * LOGIT_STD)

    hooks = [
        m.register_forward_pre_hook(calibrate_bn)
        for m in model.modules()
        if isinstance(m, _BatchNorm)
    ]
    hooks += [c.register_forward_pre_hook(scale_classifier) for c in _classifiers(model)]
    try:
        forward(model.eval(), x)  # the auxiliary head too
    finally:
        for h in hooks:
            h.remove()


def _metas(x: Tensor) -> list[dict[str, Any]]:
    h, w = x.shape[-2:]
    meta = {
        "img_shape": (h, w),
        "ori_shape": (h, w),
        "pad_shape": (h, w),
        "padding_size": [0, 0, 0, 0],
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }
    return [dict(meta) for _ in range(x.shape[0])]


def _capture(module: nn.Module, method: str, store: list[Any]) -> None:
    """Record what ``module.method`` returns (mmseg calls some ``.forward`` directly: no hooks)."""
    original = getattr(module, method)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        store.append(original(*args, **kwargs))
        return store[-1]

    setattr(module, method, wrapped)  # an instance attribute; delattr restores the method


@torch.no_grad()
def forward(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """mmseg's whole-image logits and, where there is one, the auxiliary logits, at x's size."""
    feats: list[Any] = []
    first: list[Tensor] = []
    cascade = isinstance(model.decode_head, nn.ModuleList)
    _capture(model, "extract_feat", feats)
    if cascade:  # CascadeEncoderDecoder (OCRNet): stage 0 is the soft-region FCN head
        _capture(model.decode_head[0], "forward", first)
    try:
        out = {"out": model.encode_decode(x, _metas(x))}
    finally:
        delattr(model, "extract_feat")
        if cascade:
            delattr(model.decode_head[0], "forward")
    aux_head, aux = getattr(model, "auxiliary_head", None), None
    if aux_head is not None and not isinstance(aux_head, nn.ModuleList):
        aux, ac, source = aux_head.forward(feats[0]), aux_head.align_corners, "auxiliary_head"
    elif cascade:
        aux, ac, source = first[0], model.decode_head[0].align_corners, "decode_head.0"
    if aux is not None:
        out["aux"] = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=ac)
        out["aux_source"] = source  # type: ignore[assignment]
    return out


def _param_count(model: nn.Module) -> int:
    """Trainable parameters (mmseg keeps fixed kernels, e.g. STDCHead's Laplacian and
    fusion weights, as ``requires_grad=False`` parameters; PKUSeg keeps them as constants)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_reference(name: str, spec: dict[str, Any], mode: str) -> dict[str, Any]:
    """The reference record of one arch (``mode``: ``"full"`` or ``"structure"``)."""
    t0 = time.perf_counter()
    size = tuple(int(s) for s in spec["input_size"])
    seed = _seed(name, spec["config"], size)
    torch.manual_seed(seed)  # init_weights draws from the global generator
    model = _build_shapes_only(spec["config"]) if mode == "structure" else build(spec["config"])
    ac = (
        model.decode_head[-1] if isinstance(model.decode_head, nn.ModuleList) else model.decode_head
    )
    record: dict[str, Any] = {
        "arch": name,
        "config": spec["config"],
        "input_size": list(size),
        "align_corners": bool(spec["align_corners"]),
        "mmseg_align_corners": bool(ac.align_corners),
        "mode": mode,
        "num_params": _param_count(model),
        "mmseg": str(mmseg.__version__),
        "torch": str(torch.__version__),
        "script_sha256": SCRIPT_SHA,
    }
    if mode == "structure":
        record["shapes"] = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
    else:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed + 1))
        randomize(model, x, seed)
        record["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        outputs = forward(model.double().eval(), x.double())
        record["input"] = x
        record["logits"] = outputs["out"]
        if "aux" in outputs:
            record["aux"] = outputs["aux"]
            record["aux_source"] = outputs["aux_source"]
        record["logits_std"] = float(outputs["out"].std())
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def cache_key(name: str, spec: dict[str, Any], mode: str) -> str:
    fields = {
        "arch": name,
        "config": spec["config"],
        "input_size": [int(s) for s in spec["input_size"]],
        "align_corners": bool(spec["align_corners"]),
        "mode": mode,
        "script_sha256": SCRIPT_SHA,
        "mmseg": str(mmseg.__version__),
        "mmengine": str(mmengine.__version__),
        "torch": str(torch.__version__),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _save(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(record, tmp)
    os.replace(tmp, path)  # atomic: a concurrent run sees the whole file or none


def _cached(name: str, spec: dict[str, Any], mode: str, cache: Path) -> dict[str, Any]:
    """The manifest entry of one reference, built unless the cache has it."""
    path = cache / f"{name}-{mode}-{cache_key(name, spec, mode)}.pt"
    entry: dict[str, Any] = {"config": spec["config"], "mode": mode, "path": str(path)}
    if path.is_file():
        os.utime(path)  # in use: not pruned
        entry["num_params"] = torch.load(path, weights_only=True, mmap=True)["num_params"]
        print(f"[mmseg-refs] {name}: cached {mode} reference {path.name}", flush=True)
        return entry
    try:
        record = make_reference(name, spec, mode)
    except Exception as err:
        print(f"[mmseg-refs] {name}: FAILED\n{traceback.format_exc()}", flush=True)
        return {"config": spec["config"], "mode": mode, "error": f"{type(err).__name__}: {err}"}
    _save(record, path)
    entry["num_params"] = record["num_params"]
    extra = f", logits std {record['logits_std']:.2f}" if mode == "full" else ""
    print(
        f"[mmseg-refs] {name}: built {mode} reference in {record['seconds']} s{extra}", flush=True
    )
    return entry


def run_batch(specs: dict[str, dict[str, Any]], cache: Path, full_all: bool) -> dict[str, Any]:
    """Structure references for every arch, then full ones for the smallest of each family.

    A family is a config directory (``pspnet``, ``segformer``, ...); ``full_all`` checks
    every arch in full.
    """
    manifest = {
        name: _cached(name, spec, "structure", cache) for name, spec in sorted(specs.items())
    }
    families: dict[str, list[tuple[int, str]]] = {}
    for name, entry in manifest.items():
        if "error" not in entry:
            families.setdefault(entry["config"].split("/")[0], []).append(
                (entry["num_params"], name)
            )
    full = set(specs) if full_all else {min(members)[1] for members in families.values()}
    for name in sorted(full):
        if "error" not in manifest[name]:
            manifest[name] = _cached(name, specs[name], "full", cache)
    now = time.time()
    for old in [*cache.glob("*.pt"), *cache.glob("*.tmp")]:  # .tmp: a run killed mid-save
        if now - old.stat().st_mtime > (PRUNE_AFTER_S if old.suffix == ".pt" else 86400):
            old.unlink(missing_ok=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--specs", type=Path, help="JSON: arch -> config, input_size, align_corners"
    )
    parser.add_argument("--cache", type=Path, help="reference cache directory (batch mode)")
    parser.add_argument("--manifest", type=Path, help="where to write the manifest (batch mode)")
    parser.add_argument("--full-all", action="store_true", help="forward-check every arch")
    parser.add_argument("--arch", help="one arch by hand: its name")
    parser.add_argument("--config", help="with --arch: config path under mmseg/.mim/configs")
    parser.add_argument("--size", type=int, nargs=2, default=(321, 321), metavar=("H", "W"))
    parser.add_argument("--align-corners", action="store_true")
    parser.add_argument("--structure", action="store_true", help="with --arch: shapes only")
    parser.add_argument("--out", type=Path, help="with --arch: output directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("PKUSEG_PARITY_THREADS", torch.get_num_threads())))
    if args.arch:
        if not (args.config and args.out):
            parser.error("--arch needs --config and --out")
        spec = {"config": args.config, "input_size": args.size, "align_corners": args.align_corners}
        record = make_reference(args.arch, spec, "structure" if args.structure else "full")
        path = args.out / f"{args.arch}.pt"
        _save(record, path)
        print(f"{path}: {record['num_params']} parameters, {record['seconds']} s")
        print(f"load: torch.load({str(path)!r}, weights_only=True) -> state_dict, input, logits")
        return 0
    if not (args.specs and args.cache and args.manifest):
        parser.error("batch mode needs --specs, --cache and --manifest (or use --arch)")
    specs = json.loads(args.specs.read_text())
    manifest = run_batch(specs, args.cache, args.full_all)
    args.manifest.parent.mkdir(parents=True, exist_ok=True)
    args.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
