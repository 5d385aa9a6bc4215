"""Deployment: ONNX and ``torch.export`` programs with dynamic shapes, and BatchNorm folding.

```python
from seg_heads.export import fold_bn, to_onnx, to_torch_export
report = to_onnx(model, "model.onnx", size=(512, 512), class_names=names, palette=palette)
print(report)          # exporter, opset, max |ONNX - PyTorch| on two other shapes
to_torch_export(model, "model.pt2", size=(512, 512))
fast = fold_bn(model)  # eval-mode copy, every conv -> BatchNorm pair folded into the conv
```

Both exports take the *normalised* float image ``N x 3 x H x W`` and return the ``out``
logits ``N x K x H x W`` (auxiliary outputs are dropped), with the batch, height and
width dynamic by default. What makes them work for the registered models (all but OCRNet on
HRNet, whose backbone computes an upsampling size in Python; see the tests' KNOWN_FAILURES):

- ``nn.AdaptiveAvgPool2d`` with an output size other than 1 (PSPNet's pyramid pooling,
  UPerNet's PPM) is swapped, in the exported copy only, for :class:`ShapeAdaptiveAvgPool2d`:
  the same average over the same windows (``floor(i * L / k)`` to ``ceil((i + 1) * L / k)``
  per axis, PyTorch's definition), written as two averaging matrices computed from the
  input's shape. ``aten.adaptive_avg_pool2d`` itself is the classic dynamic-shape failure:
  the legacy exporter refuses it ("input size not accessible") and torch's decomposition
  used by the dynamo exporter silently turns it into an ``avg_pool2d`` whose kernel is fixed
  for the export shape (wrong at every other size). Global pooling (size 1, ASPP's image
  pooling) exports as a mean and is kept.
- Exporter: ``exporter="auto"`` (default) uses the legacy TorchScript-tracing exporter
  (``torch.onnx.export(dynamo=False)``, opset 17) and, when it fails or its file does not
  validate, the dynamo exporter (``dynamo=True``, torch.export-based, opset 18+). Both
  export the same registered models with the pooling swapped and agree with PyTorch to
  ~1e-6 (tiny test models) to ~1e-4 (logits of ~40); the legacy one takes 1-3 s of CPU per small model where dynamo takes 10-30 s
  (``run_decompositions`` and the onnxscript optimiser), and its opset-17 files load in
  older runtimes. The legacy tracer bakes Python arithmetic on sizes into constants
  (``int(h * 2.0)``) where dynamo keeps it symbolic; the validation below catches that and
  ``auto`` then tries dynamo. When PyTorch removes the legacy exporter, ``auto`` falls
  through to dynamo. ``"legacy"`` and ``"dynamo"`` force one.
- Validation at export time: onnxruntime runs the file on two shapes that are not the export
  shape (other batch, height and width, none a multiple of 8) and the largest
  ``|ONNX - PyTorch|`` must be ``<= atol + rtol * max |PyTorch|`` (1e-4 + 1e-5 x the largest
  logit: fp32 rounding grows with the logits, ~1e-4 at logits of 15 between onnxruntime's
  and PyTorch's convolutions); the :class:`ExportReport` holds the numbers. A failure raises :class:`ExportError` naming the op (from the exporter's message,
  or, for a wrong result, the first module whose ONNX output differs from PyTorch's and the
  aten ops inside it).
- Metadata: the ONNX ``metadata_props`` hold JSON values ``class_names``, ``palette``,
  ``mean``, ``std`` (0-255 scale, in ``color_order``), ``color_order``, ``num_classes``,
  ``build_config``, ``exporter``, ``max_abs_diff`` and anything passed as ``metadata``;
  :func:`read_onnx_metadata` decodes them. ``.pt2`` files carry the same dict as the extra file
  ``pkuseg_metadata.json`` (:func:`load_torch_export`).

TorchScript: ``torch.jit.trace`` of a model works (dict outputs need ``strict=False``; the
trace follows the input's shape); ``torch.jit.script`` is not supported (the models use
Python typing TorchScript cannot compile, e.g. ``SegmentationModel.build_config: dict[str,
Any] | None``, and TorchScript is deprecated upstream): use :func:`to_torch_export`.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ExportError",
    "ExportReport",
    "ShapeAdaptiveAvgPool2d",
    "check_shapes",
    "export_copy",
    "fold_bn",
    "load_torch_export",
    "read_onnx_metadata",
    "to_onnx",
    "to_torch_export",
]

METADATA_FORMAT = "seg_heads.export/1"
_PT2_METADATA = "pkuseg_metadata.json"
_EXPORTERS = ("auto", "dynamo", "legacy")


class ExportError(RuntimeError):
    """A model could not be exported, or its export does not reproduce PyTorch; names the op."""


@dataclass
class ExportReport:
    """What an export wrote and how close it is to PyTorch.

    ``checks`` holds ``(input shape, max |exported - PyTorch|, max |PyTorch|)`` for each
    validation shape; an export passes when ``diff <= atol + rtol * max |PyTorch|``.
    """

    path: Path
    format: str
    exporter: str
    opset: int | None
    export_shape: tuple[int, ...]
    dynamic: bool
    checks: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((d for _, d, _ in self.checks), default=float("nan"))

    def __str__(self) -> str:
        checks = ", ".join(
            f"{'x'.join(map(str, s))}: {d:.2e} (|out| <= {m:.3g})" for s, d, m in self.checks
        )
        checks = checks or "not validated"
        opset = f", opset {self.opset}" if self.opset is not None else ""
        return (
            f"{self.path} ({self.format} via {self.exporter}{opset}, "
            f"{'dynamic' if self.dynamic else 'static'} shape, exported at "
            f"{'x'.join(map(str, self.export_shape))}); max |exported - PyTorch| {checks}"
        )


# ----------------------------------------------------------------------- export-friendly pooling


def _averaging_matrix(length: Any, bins: int, like: Tensor) -> Tensor:
    """``bins x length`` matrix averaging each of PyTorch's adaptive-pooling windows.

    Window ``i`` covers ``[floor(i * L / k), ceil((i + 1) * L / k))``; computed with tensor
    ops from ``length`` so that it follows the input's (symbolic) size in an export.
    """
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length + (bins - 1), bins, rounding_mode="floor")
    j = torch.arange(length, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class ShapeAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matmuls built from the input's shape.

    Equal to ``F.adaptive_avg_pool2d`` (same windows, same means; fp32 summation order
    differs) and exportable with dynamic height and width by both ONNX exporters and
    ``torch.export``. ``None`` in ``output_size`` keeps that axis.
    """

    def __init__(self, output_size: int | Sequence[int | None] | None) -> None:
        super().__init__()
        if isinstance(output_size, int) or output_size is None:
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def forward(self, x: Tensor) -> Tensor:
        out_h, out_w = self.output_size
        if out_h is not None:
            x = torch.matmul(_averaging_matrix(x.shape[-2], out_h, x), x)
        if out_w is not None:
            x = torch.matmul(x, _averaging_matrix(x.shape[-1], out_w, x).transpose(0, 1))
        return x

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _is_global(output_size: Any) -> bool:
    sizes = (output_size,) * 2 if isinstance(output_size, int) else tuple(output_size)
    return all(s == 1 for s in sizes)


def _swap_adaptive_pools(model: nn.Module) -> int:
    """Replace non-global ``nn.AdaptiveAvgPool2d`` children in place; returns how many."""
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and not _is_global(child.output_size):
                setattr(parent, name, ShapeAdaptiveAvgPool2d(child.output_size))
                count += 1
    return count


class _LogitsOnly(nn.Module):
    """``model(x)["out"]`` (or the tensor the model returns): the exported function."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def export_copy(model: nn.Module) -> nn.Module:
    """The module that gets exported: an eval-mode fp32 CPU copy returning only ``out``.

    The auxiliary head is dropped and non-global adaptive average pools are swapped for
    :class:`ShapeAdaptiveAvgPool2d`; the given model is not modified.
    """
    net = copy.deepcopy(model).cpu().float().eval()
    if getattr(net, "aux_head", None) is not None:
        net.aux_head = None
    _swap_adaptive_pools(net)
    return _LogitsOnly(net).eval()


@torch.no_grad()
def _reference(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return (out["out"] if isinstance(out, dict) else out).float()


def check_shapes(
    size: Sequence[int], dynamic: bool = True, min_size: Sequence[int] = (17, 17)
) -> list[tuple[int, int, int, int]]:
    """The two input shapes an export of ``size`` is validated on.

    Dynamic: other batch sizes (1 and 3, the export uses 2), heights and widths ~0.6-0.8x the
    export size (at least ``min_size``) and none a multiple of 8, so that divisibility cannot
    hide a kernel fixed at the export shape. Static: the export shape twice (two inputs).
    """
    h, w = (int(s) for s in size)
    if not dynamic:
        return [(1, 3, h, w), (1, 3, h, w)]
    lo_h, lo_w = (int(s) for s in min_size)

    def other(v: int, lo: int, ref: int) -> int:
        v = max(v, lo)
        v = v + 1 if v % 8 == 0 else v
        return v + 1 if v == ref else v

    return [
        (1, 3, other(h * 3 // 4 + 3, lo_h, h), other(w * 5 // 8 + 5, lo_w, w)),
        (3, 3, other(h * 5 // 8 + 1, lo_h, h), other(w * 3 // 4 + 1, lo_w, w)),
    ]


def _example_input(size: Sequence[int], dynamic: bool) -> Tensor:
    h, w = (int(s) for s in size)
    if min(h, w) < 2:
        raise ValueError(f"size must be (height, width) >= 2, got {tuple(size)}")
    # batch 2 for dynamic exports: torch.export specialises dimensions of size 0 and 1
    return torch.randn(2 if dynamic else 1, 3, h, w, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- naming the culprit

_OP_PATTERNS = (
    r"(aten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
    r"ONNX export of operator ([A-Za-z0-9_:]+)",
    r"[Uu]nsupported (?:operator|op|FX nodes?)[^A-Za-z0-9]*([A-Za-z0-9_.:]+)",
)


def _ops_in_message(message: str) -> list[str]:
    found: list[str] = []
    for pattern in _OP_PATTERNS:
        for op in re.findall(pattern, message):
            if op not in found and not op.startswith("aten.sym_"):
                found.append(op)
    return found


def _export_failure(what: str, exc: BaseException) -> str:
    """One line naming the op(s) the exporter choked on, plus the start of its message."""
    text = f"{type(exc).__name__}: {exc}"
    ops = _ops_in_message(text)
    head = " ".join(text.split())[:600]
    named = f"op {', '.join(ops[:3])}" if ops else "no op named by the exporter"
    return f"{what} failed ({named}): {head}"


def _node_modules(node: Any) -> list[str]:
    """Paths (in the exported model, outermost first) of the modules an ONNX node belongs to.

    Dynamo exports carry ``pkg.torch.onnx.name_scopes`` (``['', 'model', 'model.backbone',
    ..., node]``); legacy node names read ``/model/backbone/layer1/layer1.0/conv1/Conv``.
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(prop.value.replace("'", '"'))
            except ValueError:
                return []
            return [s.removeprefix("model.") for s in scopes[2:-1]]
    parts = node.name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "model":
        return []
    paths, current = [], ""
    for part in parts[1:-1]:  # a ModuleList child reads "stage2.0" under "stage2"
        last = current.rpartition(".")[0] if current else ""
        prev = current.rsplit(".", 1)[-1] if current else ""
        if prev and part.startswith(prev + "."):
            current = f"{last}.{part}" if last else part
        else:
            current = f"{current}.{part}" if current else part
        paths.append(current)
    return paths


def _node_op(node: Any) -> str:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.fx_node":
            m = re.search(r"target=([^\]]+)\]", prop.value)
            if m:
                return m.group(1).replace("torch.ops.", "")
    return f"onnx::{node.op_type}"


@dataclass
class _Scope:
    """What one module became in an ONNX graph."""

    input: str | None = None  # first value it reads that was computed outside it
    output: str = ""  # the last value computed inside it
    ops: list[str] = field(default_factory=list)


def _module_scopes(onnx_model: Any) -> tuple[dict[str, _Scope], dict[str, Any]]:
    """``module path -> _Scope`` and ``value name -> producing node`` of an ONNX graph."""
    scopes: dict[str, _Scope] = {}
    producer: dict[str, Any] = {}
    inside: dict[str, set[str]] = {}
    for node in onnx_model.graph.node:
        op = _node_op(node)
        for path in _node_modules(node):
            scope = scopes.setdefault(path, _Scope())
            made = inside.setdefault(path, set())
            if scope.input is None:
                scope.input = next((v for v in node.input if v in producer and v not in made), None)
            if op not in scope.ops:
                scope.ops.append(op)
            scope.output = node.output[0]
            made.update(node.output)
        for value in node.output:
            producer[value] = node
    return scopes, producer


def _describe_node(node: Any) -> str:
    paths = _node_modules(node)
    where = f"module {paths[-1]!r}" if paths else "the top level"
    return f"op {_node_op(node)} (ONNX node {node.name!r}) in {where}"


def _eager_module_io(
    net: nn.Module, names: set[str], x: Tensor
) -> list[tuple[str, Tensor | None, Tensor]]:
    """``(name, first input, output)`` of the named modules of ``net`` run once, in order."""
    inner = net.model if isinstance(net, _LogitsOnly) else net
    seen: list[tuple[str, Tensor | None, Tensor]] = []
    hooks = []
    for name, module in inner.named_modules():
        if name in names:

            def hook(_m: nn.Module, args: Any, out: Any, name: str = name) -> None:
                if isinstance(out, Tensor) and out.is_floating_point():
                    first = args[0] if args and isinstance(args[0], Tensor) else None
                    first = first.detach().clone() if first is not None else None
                    seen.append((name, first, out.detach().clone()))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    calls = [name for name, _, _ in seen]  # a module run twice has one ONNX scope for both
    return [item for item in seen if calls.count(item[0]) == 1]


def _differs(got: Any, ref: Tensor, atol: float) -> str | None:
    got = torch.from_numpy(got)
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} in ONNX but {tuple(ref.shape)} in PyTorch"
    diff = (got.float() - ref.float()).abs().max().item()
    if diff > max(atol, 1e-3 * (1.0 + ref.abs().max().item())):
        return f"values off by {diff:.3g}"
    return None


def _locate_mismatch(net: nn.Module, path: Path, x: Tensor, atol: float) -> str | None:
    """Name the op behind the first module (in execution order) whose ONNX output is wrong."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    scopes, producer = _module_scopes(model)
    seen = _eager_module_io(net, set(scopes), x)
    types = {vi.name: vi for vi in model.graph.value_info}
    known = {o.name for o in model.graph.output}
    for value in {v for n, _, _ in seen for v in (scopes[n].input, scopes[n].output) if v}:
        if value not in known:
            float_vi = onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None)
            model.graph.output.append(types.get(value, float_vi))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    try:
        values = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    except Exception as exc:  # the graph itself breaks at this shape: name the node
        m = re.search(r"node\. Name:'([^']+)'", str(exc))
        node = next((n for n in model.graph.node if m and n.name == m.group(1)), None)
        where = _describe_node(node) if node is not None else "an ONNX node"
        return f"{where} fails in onnxruntime: {' '.join(str(exc).split())[-240:]}"
    results = dict(zip([o.name for o in sess.get_outputs()], values))
    inner = net.model if isinstance(net, _LogitsOnly) else net
    for name, first, out in seen:
        scope = scopes[name]
        wrong = _differs(results[scope.output], out, atol)
        if wrong is None:
            continue
        value = results.get(scope.input) if scope.input else None
        comparable = isinstance(value, np.ndarray) and value.dtype.kind == "f"
        if comparable and first is not None and value.ndim == first.dim():
            upstream = _differs(value, first, atol)
            if upstream is not None:  # the error comes from the op that made its input
                return f"{_describe_node(producer[scope.input])} gives {upstream}"
        cls = type(inner.get_submodule(name)).__name__
        return f"module {name!r} ({cls}, ops {', '.join(scope.ops[:6])}) gives {wrong}"
    return None


# ------------------------------------------------------------------------------------ metadata


def _default_metadata(model: nn.Module) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": METADATA_FORMAT}
    norm = getattr(model, "input_norm", None)
    if isinstance(norm, Mapping):
        meta.update({k: norm[k] for k in ("mean", "std", "color_order") if norm.get(k) is not None})
    build = getattr(model, "build_config", None)
    if isinstance(build, Mapping):
        meta["build_config"] = dict(build)
        meta["num_classes"] = build.get("num_classes")
        meta["align_corners"] = build.get("align_corners")
    return meta


def _metadata(
    model: nn.Module,
    class_names: Sequence[str] | None,
    palette: Any,
    input_norm: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    meta = _default_metadata(model)
    if input_norm is not None:
        meta.update({k: input_norm[k] for k in ("mean", "std", "color_order") if k in input_norm})
    if class_names is not None:
        meta["class_names"] = [str(c) for c in class_names]
    if palette is not None:
        meta["palette"] = [
            [int(v) for v in c]
            for c in (palette.tolist() if hasattr(palette, "tolist") else palette)
        ]
    meta.update(dict(extra or {}))
    return meta


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (plain strings kept)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


def _write_onnx_metadata(path: Path, meta: Mapping[str, Any], dims: Sequence[str]) -> None:
    """Set ``metadata_props`` and name the input's dynamic dims ``batch/height/width``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in meta.items():
        if value is not None:
            model.metadata_props.add(key=str(key), value=_encode(value))
    renames: dict[str, str] = {}
    for dim, new in zip(model.graph.input[0].type.tensor_type.shape.dim, dims):
        if dim.dim_param and new and dim.dim_param != new:
            renames[dim.dim_param] = new
    if renames:
        for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for dim in vi.type.tensor_type.shape.dim:
                if dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------------------- ONNX


def _onnx_dynamo(net: nn.Module, x: Tensor, path: Path, dynamic: bool, opset: int | None) -> None:
    from torch.export import Dim

    shapes = {"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}} if dynamic else None
    big = sum(p.numel() * p.element_size() for p in net.parameters()) > 1.5 * 2**30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            input_names=["input"],
            output_names=["out"],
            dynamic_shapes=shapes,
            opset_version=opset,
            external_data=big,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=big)


def _onnx_legacy(net: nn.Module, x: Tensor, path: Path, dynamic: bool, opset: int | None) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": axes, "out": axes} if dynamic else None,
            opset_version=opset if opset is not None else 17,
            do_constant_folding=True,
        )


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _reference_model(model: nn.Module) -> nn.Module:
    """The user's model as the PyTorch reference: itself when on CPU in fp32, else a copy."""
    p = next(iter(model.parameters()), None)
    if p is None or (p.device.type == "cpu" and p.dtype == torch.float32):
        return model
    return copy.deepcopy(model).cpu().float()


Checks = list[tuple[tuple[int, ...], float, float]]


def _compare(run: Any, reference: nn.Module, shapes: Sequence[Sequence[int]]) -> Checks:
    """``(shape, max |run(x) - ref(x)|, max |ref(x)|)`` on seeded random inputs (inf: bad shape)."""
    was_training = reference.training
    reference.eval()
    checks = []
    try:
        for k, shape in enumerate(shapes):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + k))
            ref = _reference(reference, x)
            got = torch.as_tensor(run(x)).float()
            diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
            checks.append((tuple(int(s) for s in shape), diff, ref.abs().max().item()))
    finally:
        reference.train(was_training)
    return checks


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    size: Sequence[int] = (512, 512),
    dynamic: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
    class_names: Sequence[str] | None = None,
    palette: Any = None,
    input_norm: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    validate: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> ExportReport:
    """Export ``model`` to an ONNX file: normalised ``N x 3 x H x W`` -> ``out`` logits.

    Args:
        model: a :class:`~seg_heads.SegmentationModel` (or any module returning logits or a
            dict with ``"out"``); not modified.
        path: the ``.onnx`` file to write.
        size: ``(H, W)`` of the example input the exporter traces.
        dynamic: dynamic batch, height and width (input ``input``: ``batch x 3 x height x
            width``); ``False`` fixes the shape to ``1 x 3 x H x W``.
        opset: ONNX opset (``None``: the exporter's default, 17 for legacy, 18+ for dynamo).
        exporter: ``"auto"`` (legacy, then dynamo if it fails), ``"legacy"`` or ``"dynamo"``.
        class_names, palette: stored in the metadata (``palette``: ``K x 3`` RGB).
        input_norm: ``{"mean", "std", "color_order"}`` (0-255 scale) when the model's own
            ``input_norm`` is unknown (the trainer passes its ``Normalize``).
        metadata: more JSON-serialisable ``metadata_props`` entries.
        validate: run onnxruntime on :func:`check_shapes` and require
            ``max |ONNX - PyTorch| <= atol + rtol * max |PyTorch|`` (1e-4 + 1e-5 x the
            largest logit: fp32 rounding grows with the logits, a shape error does not).
        atol, rtol: the tolerances of ``validate``.

    Returns:
        an :class:`ExportReport` (exporter used, opset, the differences per shape).

    Raises:
        ExportError: every exporter failed or disagreed with PyTorch; the message names the op.
    """
    if exporter not in _EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; valid: {list(_EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net, x = export_copy(model), _example_input(size, dynamic)
    reference, shapes = _reference_model(model), check_shapes(size, dynamic)
    failures: list[str] = []
    for name in ("legacy", "dynamo") if exporter == "auto" else (exporter,):
        try:
            (_onnx_dynamo if name == "dynamo" else _onnx_legacy)(net, x, path, dynamic, opset)
        except Exception as exc:  # exporters raise anything; the message is kept
            failures.append(_export_failure(f"the {name} exporter", exc))
            continue
        checks: Checks = []
        if validate:
            checks = _validate_onnx(path, reference, shapes)
            bad = _worst_failing(checks, atol, rtol)
            if bad is not None:
                where = _try_locate(net, path, bad[0], atol, name)
                failures.append(
                    f"the {name} export differs from PyTorch by {bad[1]:.3g} at input "
                    f"{bad[0]} (outputs up to {bad[2]:.3g}; exported at {tuple(x.shape)}): "
                    f"{where or 'op not located'}"
                )
                continue
        meta = _metadata(model, class_names, palette, input_norm, metadata)
        meta.update(exporter=name, max_abs_diff=max((c[1] for c in checks), default=None))
        _write_onnx_metadata(path, meta, ("batch", "", "height", "width"))
        return ExportReport(
            path, "onnx", name, _onnx_opset(path), tuple(x.shape), dynamic, checks, failures
        )
    path.unlink(missing_ok=True)
    raise ExportError(
        f"cannot export {type(model).__name__} to ONNX "
        f"({'dynamic' if dynamic else 'static'} shapes):\n  " + "\n  ".join(failures)
    )


def _worst_failing(
    checks: Checks, atol: float, rtol: float
) -> tuple[tuple[int, ...], float, float] | None:
    """The check with the largest difference when any fails ``atol + rtol * scale``."""
    if all(d <= atol + rtol * m for _, d, m in checks):
        return None
    return max(checks, key=lambda c: c[1])


def _validate_onnx(path: Path, reference: nn.Module, shapes: Sequence[Sequence[int]]) -> Checks:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Any:
        try:
            return sess.run(["out"], {"input": x.numpy()})[0]
        except Exception:  # a shape the graph cannot take: count as a mismatch
            return torch.full((0,), float("nan"))

    return _compare(run, reference, shapes)


def _try_locate(
    net: nn.Module, path: Path, shape: Sequence[int], atol: float, exporter: str
) -> str | None:
    x = torch.randn(*shape)
    try:
        # the legacy exporter folds BatchNorm into the convs: compare with a folded model
        reference = fold_bn(net, example_input=x[:1]) if exporter == "legacy" else net
        return _locate_mismatch(reference, path, x, atol)
    except Exception as exc:  # diagnosis only: never hide the mismatch itself
        return f"(could not locate the op: {type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------------- torch.export


def to_torch_export(
    model: nn.Module,
    path: str | Path,
    *,
    size: Sequence[int] = (512, 512),
    dynamic: bool = True,
    class_names: Sequence[str] | None = None,
    palette: Any = None,
    input_norm: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    validate: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> ExportReport:
    """Save ``model`` as a ``torch.export`` program (``.pt2``) with dynamic batch, height, width.

    The program maps the normalised ``N x 3 x H x W`` image to the ``out`` logits (see
    :func:`to_onnx` for the arguments); load it with :func:`load_torch_export`. The
    metadata (and the valid ``[min, max]`` of each dynamic dimension, ``dynamic_dims``) is
    stored beside the program as the extra file ``pkuseg_metadata.json``.
    """
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net, x = export_copy(model), _example_input(size, dynamic)
    spec = {"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}} if dynamic else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(net, (x,), dynamic_shapes=spec)
    except Exception as exc:
        raise ExportError(
            f"cannot export {type(model).__name__} with torch.export: "
            + _export_failure("torch.export", exc)
        ) from exc
    dims = _dynamic_dims(program) if dynamic else {}
    checks: Checks = []
    if validate:
        lows = (dims.get("height", [17])[0] or 17, dims.get("width", [17])[0] or 17)
        runner = program.module()
        with torch.no_grad():
            checks = _compare(runner, _reference_model(model), check_shapes(size, dynamic, lows))
        bad = _worst_failing(checks, atol, rtol)
        if bad is not None:
            raise ExportError(
                f"the torch.export program of {type(model).__name__} differs from PyTorch by "
                f"{bad[1]:.3g} at input {bad[0]} (outputs up to {bad[2]:.3g}; exported at "
                f"{tuple(x.shape)})"
            )
    meta = _metadata(model, class_names, palette, input_norm, metadata)
    meta.update(
        exporter="torch.export",
        max_abs_diff=max((c[1] for c in checks), default=None),
        dynamic_dims=dims,
    )
    torch.export.save(
        program, str(path), extra_files={_PT2_METADATA: json.dumps(meta, default=str)}
    )
    notes = [f"valid input sizes [min, max]: {dims}"] if dims else []
    return ExportReport(
        path, "torch-export", "torch.export", None, tuple(x.shape), dynamic, checks, notes
    )


def _dynamic_dims(program: Any) -> dict[str, list[int | None]]:
    """``{"batch": [min, max], "height": ..., "width": ...}`` of the program's input (max None: unbounded)."""
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x")
    dims: dict[str, list[int | None]] = {}
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        sym = placeholder.meta["val"].shape[axis]
        expr = getattr(getattr(sym, "node", None), "expr", None)
        vr = program.range_constraints.get(expr) if expr is not None else None
        if vr is None:
            continue
        try:
            hi: int | None = int(vr.upper)
        except (TypeError, ValueError, OverflowError, AttributeError):
            hi = None  # unbounded (int_oo)
        dims[name] = [int(vr.lower), hi]
    return dims


def load_torch_export(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(ExportedProgram, metadata)`` of a ``.pt2`` written by :func:`to_torch_export`."""
    extra = {_PT2_METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[_PT2_METADATA]) if extra[_PT2_METADATA] else {}
    return program, meta


# ------------------------------------------------------------------------------ BatchNorm folding

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` in float64 of an eval-mode BatchNorm (or frozen BN), else None."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    frozen = type(bn).__name__ == "FrozenBatchNorm2d"
    if not (isinstance(bn, nn.modules.batchnorm._BatchNorm) or frozen):
        return None
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return None  # track_running_stats=False normalises with batch statistics
    scale = (var.double() + bn.eps).rsqrt()
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    if weight is not None:
        scale = scale * weight.detach().double()
    shift = -mean.double() * scale
    if bias is not None:
        shift = shift + bias.detach().double()
    return scale, shift


class _UseTracker(torch.overrides.TorchFunctionMode):
    """Records, for every tracked tensor, the innermost module of each op that reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tracked: dict[int, Tensor] = {}  # ids of conv outputs (kept alive: ids stay unique)
        self.users: dict[int, set[str]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        produces = any(isinstance(o, Tensor) for o in torch.utils._pytree.tree_leaves(out))
        if produces and self.tracked:
            where = self.stack[-1] if self.stack else ""
            for leaf in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor) and id(leaf) in self.tracked:
                    self.users[id(leaf)].add(where)
        return out


def _conv_bn_pairs(net: nn.Module, example: Tensor) -> dict[str, str]:
    """``{conv name: bn name}`` where every output of the conv is read only by that BN.

    Found by running ``example`` once: module hooks say which conv produced each tensor and
    which BN receives it, a TorchFunctionMode records every op that reads a conv output, so a
    conv output also used elsewhere (a residual, a concatenation) is never folded.
    """
    tracker = _UseTracker()
    conv_calls: dict[str, list[int]] = {}
    bn_inputs: dict[str, list[int]] = {}
    bn_candidates = {n for n, m in net.named_modules() if _bn_scale_shift(m) is not None}
    hooks = []
    for name, module in net.named_modules():

        def pre(m: nn.Module, args: Any, name: str = name) -> None:
            tracker.stack.append(name)
            if name in bn_candidates and args and isinstance(args[0], Tensor):
                bn_inputs.setdefault(name, []).append(id(args[0]))

        def post(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            tracker.stack.pop()
            if isinstance(m, _CONVS) and isinstance(out, Tensor):
                tracker.tracked[id(out)] = out
                tracker.users[id(out)] = set()
                conv_calls.setdefault(name, []).append(id(out))

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad(), tracker:
            net(example)
    finally:
        for h in hooks:
            h.remove()
    pairs: dict[str, str] = {}
    for conv, outputs in conv_calls.items():
        users = set().union(*(tracker.users[o] for o in outputs))
        if len(users) != 1:
            continue
        (bn,) = users
        if bn in bn_candidates and set(bn_inputs.get(bn, [])) <= set(outputs):
            pairs[conv] = bn
    # a BN fed by several convs (or a conv called for several BNs) is left alone
    fed = [bn for bn in pairs.values()]
    return {c: b for c, b in pairs.items() if fed.count(b) == 1}


@torch.no_grad()
def fold_bn(model: nn.Module, *, example_input: Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm that follows a conv folded into it.

    ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
    (computed in float64), and the BN replaced by ``nn.Identity``. A BN is folded only when
    its conv's output goes nowhere else (found by one forward pass of ``example_input``,
    default ``1 x 3 x 128 x 128``); BNs without running statistics, GroupNorm and LayerNorm
    stay. Outputs equal the original's within fp32 rounding. ``model`` is not modified.
    """
    net = copy.deepcopy(model).eval()
    p = next(iter(net.parameters()), None)
    if example_input is None:
        device, dtype = (p.device, p.dtype) if p is not None else ("cpu", torch.float32)
        example_input = torch.zeros(1, 3, 128, 128, device=device, dtype=dtype).normal_()
    pairs = _conv_bn_pairs(net, example_input)
    for conv_name, bn_name in pairs.items():
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        scale, shift = _bn_scale_shift(bn)  # type: ignore[misc]
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), conv.weight.requires_grad)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), conv.weight.requires_grad)
        parent, _, attr = bn_name.rpartition(".")
        setattr(net.get_submodule(parent), attr, nn.Identity())
    net.folded_bn = len(pairs)  # type: ignore[assignment]
    return net
