"""Nox sessions for the PKUSeg monorepo.

Run ``nox -l`` to list the sessions. ``nox`` alone runs the CI set: lint, the
isolated per-package tests and the cross-package integration tests.

Isolation: every package is tested in its own virtualenv holding only that
package, the PKUSeg packages it declares, its declared third-party
dependencies and its ``test`` extra. Installing PyTorch takes minutes and
gigabytes, so torch itself is installed once into a shared base environment
(``.nox/_torch_base``, torch only) that each session sees through a ``.pth``
file. Nothing else is shared, so importing an undeclared sibling package fails
in that package's session; ``tests/test_dependencies.py`` also checks every
import statically against the declared dependencies.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
TORCH_BASE = ROOT / ".nox" / "_torch_base"
TORCH_REQ = "torch>=2.4"

PACKAGES: dict[str, list[str]] = {
    # session id -> local paths to install, dependencies first (last one is tested)
    "seg-backbones": ["packages/seg-backbones"],
    "seg-heads": ["packages/seg-backbones", "packages/seg-heads"],
    "seg-data": ["packages/seg-data"],
    "seg-metrics": ["packages/seg-metrics"],
    "trainer": [
        "packages/seg-backbones",
        "packages/seg-heads",
        "packages/seg-data",
        "packages/seg-metrics",
        "apps/trainer",
    ],
}
ALL_LOCAL = PACKAGES["trainer"]

nox.options.sessions = ["lint", "tests", "integration"]
nox.options.default_venv_backend = "virtualenv"


def _base_site_packages() -> Path:
    """Create (once) the shared torch-only environment and return its site-packages."""
    python = TORCH_BASE / "bin" / "python"
    marker = TORCH_BASE / ".pkuseg-ready"
    if not marker.exists():
        import subprocess

        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TORCH_BASE)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_REQ], check=True)
        marker.write_text("ok\n")
    out = os.popen(f"{python} -c \"import sysconfig; print(sysconfig.get_paths()['purelib'])\"")
    return Path(out.read().strip())


def _link_torch(session: nox.Session) -> None:
    """Make the shared torch install visible inside this session's virtualenv."""
    base = _base_site_packages()
    purelib = session.run(
        "python",
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        silent=True,
    )
    assert isinstance(purelib, str)
    Path(purelib.strip().splitlines()[-1], "_pkuseg_torch_base.pth").write_text(f"{base}\n")


def _install(session: nox.Session, paths: list[str], extra: str | None = "test") -> None:
    """Install local packages (the last one with ``extra``) into a session with torch linked."""
    _link_torch(session)
    args = [*paths[:-1], f"{paths[-1]}[{extra}]" if extra else paths[-1]]
    session.install(*args)


@nox.session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Run one package's own tests in an environment holding only that package."""
    paths = PACKAGES[package]
    _install(session, paths)
    session.run("pytest", f"{paths[-1]}/tests", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """Run the cross-package tests in tests/ with every package installed."""
    _install(session, ALL_LOCAL)
    session.install("torchvision>=0.19", "pytest>=7")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff (lint and formatting)."""
    session.install("ruff==0.17.6")  # pinned: formatting changes between releases
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a short training + evaluation on the built-in synthetic dataset (CPU)."""
    _install(session, ALL_LOCAL, extra=None)
    # The demo always starts fresh: seg-train refuses an output_dir that already holds
    # checkpoints (use --resume to continue a real run).
    previous = ROOT / "work_dirs" / "demo" / "pspnet_r18-deep_synthetic"
    if previous.exists():
        session.log(f"removing the previous demo run in {previous}")
        shutil.rmtree(previous)
    session.run(
        "seg-train",
        "--config",
        "apps/trainer/configs/demo/pspnet_r18-deep_synthetic.yaml",
        "--cpu",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (speed, memory) side by side with peers from PyPI; never run by CI.

    Runs every ``tests/benchmarks/bench_*.py`` script, or only those named in posargs
    (e.g. ``nox -s bench -- metrics``).
    """
    _install(session, ALL_LOCAL, extra=None)
    session.install("torchvision>=0.19", "torchmetrics>=1.0")
    scripts = sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py"))
    wanted = set(session.posargs)
    for script in scripts:
        if not wanted or script.stem.removeprefix("bench_") in wanted:
            session.run("python", str(script.relative_to(ROOT)))
