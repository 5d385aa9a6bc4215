"""Every import in every PKUSeg distribution is declared, and packages depend downward only.

The per-package nox sessions catch undeclared imports at run time for code the tests
reach; this test reads every source file, so it also covers code no test executes.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {
    "seg_backbones": ROOT / "packages" / "seg-backbones",
    "seg_heads": ROOT / "packages" / "seg-heads",
    "seg_data": ROOT / "packages" / "seg-data",
    "seg_metrics": ROOT / "packages" / "seg-metrics",
    "seg_trainer": ROOT / "apps" / "trainer",
}
# import name -> distribution name, where they differ
IMPORT_TO_DIST = {"PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python"}
SIBLINGS = {name: name.replace("_", "-") for name in DISTRIBUTIONS}
SIBLINGS["seg_trainer"] = "seg-trainer"
# What each package may import from its siblings (packages depend downward only).
ALLOWED_SIBLINGS = {
    "seg_backbones": set(),
    "seg_heads": {"seg_backbones"},
    "seg_data": set(),
    "seg_metrics": set(),
    "seg_trainer": {"seg_backbones", "seg_heads", "seg_data", "seg_metrics"},
}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """Return (runtime dependencies, optional non-test extras) as normalised names."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {_requirement_name(r) for r in project.get("dependencies", [])}
    optional: set[str] = set()
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra != "test":
            optional |= {_requirement_name(r) for r in reqs}
    return runtime, optional


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """Top-level modules imported by a file: (name, line, guarded by try/except ImportError)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
            for h in node.handlers
        ):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if hasattr(sub, "lineno"):
                        guarded_lines.add(sub.lineno)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name.split(".")[0], node.lineno, node.lineno in guarded_lines))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, node.lineno in guarded_lines))
    return found


def _function_level(path: Path) -> set[int]:
    """Lines of imports made inside functions (lazy imports of optional extras)."""
    tree = ast.parse(path.read_text())
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    lines.add(sub.lineno)
    return lines


def _check(package: str, dist_dir: Path) -> list[str]:
    """Every problem with the imports of one distribution, as readable lines."""
    runtime, optional = _declared(dist_dir / "pyproject.toml")
    sources = sorted((dist_dir / "src" / package).rglob("*.py"))
    assert sources, f"no sources found for {package} under {dist_dir}"
    problems = []
    for src in sources:
        lazy = _function_level(src)
        for name, line, guarded in _imports(src):
            where = f"{src.relative_to(dist_dir.parent)}:{line}"
            if name == package or name in sys.stdlib_module_names or name == "__future__":
                continue
            if name in SIBLINGS:
                if name not in ALLOWED_SIBLINGS[package]:
                    problems.append(f"{where} imports sibling {name}: not allowed for {package}")
                elif SIBLINGS[name] not in runtime:
                    problems.append(f"{where} imports {name} but {SIBLINGS[name]} is not declared")
                continue
            dist = IMPORT_TO_DIST.get(name, name).lower().replace("_", "-")
            if dist in runtime:
                continue
            if dist in optional and (guarded or line in lazy):
                continue  # optional extra, imported lazily or behind an ImportError guard
            problems.append(
                f"{where} imports {name!r} (distribution {dist!r}) which {package}'s "
                f"pyproject.toml does not declare"
                + (
                    " as a runtime dependency (it is an extra: import it lazily)"
                    if dist in optional
                    else ""
                )
            )
    return problems


@pytest.mark.parametrize("package", list(DISTRIBUTIONS))
def test_imports_are_declared(package: str) -> None:
    problems = _check(package, DISTRIBUTIONS[package])
    assert not problems, "\n".join(problems)


def test_packages_never_import_apps() -> None:
    offenders = []
    for src in (ROOT / "packages").rglob("src/**/*.py"):
        for name, line, _ in _imports(src):
            if name == "seg_trainer":
                offenders.append(f"{src.relative_to(ROOT)}:{line}")
    assert not offenders, f"packages/ must not import apps/: {offenders}"


def test_import_checker_catches_undeclared_imports(tmp_path: Path) -> None:
    """The checker itself can fail: undeclared siblings and third-party modules are reported."""
    dist = tmp_path / "seg-data"
    (dist / "src" / "seg_data").mkdir(parents=True)
    (dist / "pyproject.toml").write_text(
        '[project]\nname = "seg-data"\ndependencies = ["numpy"]\n'
        '[project.optional-dependencies]\nviz = ["matplotlib"]\ntest = ["scipy"]\n'
    )
    (dist / "src" / "seg_data" / "bad.py").write_text(
        "import os\nimport numpy\nfrom seg_heads import create_model\nimport scipy\n"
        "import matplotlib\n\ndef lazy():\n    import matplotlib.pyplot\n"
    )
    problems = _check("seg_data", dist)
    assert len(problems) == 3, problems
    assert "sibling seg_heads" in problems[0]
    assert "'scipy'" in problems[1]
    assert "'matplotlib'" in problems[2] and "extra" in problems[2]
