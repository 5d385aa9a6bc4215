"""Nox sessions for the PKUSeg monorepo.

Run ``nox -l`` to list the sessions. ``nox`` alone runs the CI set: lint, the
isolated per-package tests, the cross-package integration tests and the parity
checks of the converters against the reference implementations themselves.

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

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

# Reference environments and the references they generate live outside the clone, so
# that they survive fresh checkouts; PKUSEG_PARITY_CACHE moves them.
PARITY_CACHE = Path(
    os.environ.get("PKUSEG_PARITY_CACHE") or Path.home() / ".cache" / "pkuseg" / "parity-mmseg"
)
# mmsegmentation 1.2.2 on mmcv-lite (../shared/docs/REFERENCES.md), in its own virtualenv
# that sees the shared torch base (as every session does; mmseg needs no torchvision).
MMSEG_REFERENCE_REQS = (
    "mmcv-lite==2.1.0",
    "mmengine==0.10.7",
    "mmsegmentation==1.2.2",
    "ftfy",
    "regex",
)

nox.options.sessions = ["lint", "tests", "integration", "parity"]
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
    (e.g. ``nox -s bench -- metrics``). The trainer comes with its ``deploy`` extra (onnx,
    onnxruntime, onnxscript, openvino): ``bench_deploy.py`` times those runtimes.
    """
    _install(session, ALL_LOCAL, extra="deploy")
    session.install("torchvision>=0.19", "torchmetrics>=1.0")
    scripts = sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py"))
    wanted = set(session.posargs)
    for script in scripts:
        if not wanted or script.stem.removeprefix("bench_") in wanted:
            session.run("python", str(script.relative_to(ROOT)))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two CI runs on one machine build a venv once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mmseg_reference_python(session: nox.Session) -> Path:
    """The python of the mmsegmentation 1.2.2 virtualenv, created once per requirement set."""
    tag = hashlib.sha256(repr((MMSEG_REFERENCE_REQS, sys.version_info[:2])).encode()).hexdigest()
    venv = PARITY_CACHE / f"venv-{tag[:12]}"
    python = venv / "bin" / "python"
    marker = venv / ".pkuseg-ready"
    base = _base_site_packages()
    with _locked(PARITY_CACHE / f"venv-{tag[:12]}.lock"):
        if not marker.exists():
            session.log(f"building the mmsegmentation reference environment in {venv}")
            session.run(sys.executable, "-m", "venv", "--clear", str(venv), external=True)
            purelib = session.run(
                str(python),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                external=True,
                silent=True,
            )
            assert isinstance(purelib, str)
            Path(purelib.strip(), "_pkuseg_torch_base.pth").write_text(f"{base}\n")
            session.run(
                str(python), "-m", "pip", "install", "-q", *MMSEG_REFERENCE_REQS, external=True
            )
            marker.write_text("ok\n")
    return python


@nox.session
def parity(session: nox.Session) -> None:
    """Every ``from_mmseg`` arch against mmsegmentation 1.2.2 itself (random weights, fp64).

    The list of archs is ``seg_heads.convert.MMSEG_ARCHS``; references are generated by
    mmseg in its own cached virtualenv and cached by spec (tests/parity/README.md).
    ``PKUSEG_PARITY_FULL_ALL=1`` forward-checks every arch, not one per family; posargs go
    to pytest.
    """
    _install(session, PACKAGES["seg-heads"], extra="zoo")
    session.install("pytest>=7")
    tmp = Path(session.create_tmp())
    specs, manifest = tmp / "mmseg_archs.json", tmp / "mmseg_manifest.json"
    session.run("python", str(ROOT / "tests" / "parity" / "dump_mmseg_archs.py"), str(specs))
    generate = [str(ROOT / "tests" / "parity" / "make_mmseg_refs.py"), "--specs", str(specs)]
    generate += ["--cache", str(PARITY_CACHE / "refs"), "--manifest", str(manifest)]
    if os.environ.get("PKUSEG_PARITY_FULL_ALL") == "1":
        generate.append("--full-all")
    start = time.perf_counter()
    python = _mmseg_reference_python(session)
    session.log(f"parity: mmseg environment ready after {time.perf_counter() - start:.0f} s")
    session.run(str(python), *generate, external=True)
    session.log(f"parity: mmseg references ready after {time.perf_counter() - start:.0f} s")
    session.run(
        "pytest",
        str(ROOT / "tests" / "parity" / "check_mmseg.py"),
        "-v",
        "-s",
        "--durations=5",
        *session.posargs,
        env={"PKUSEG_PARITY_MMSEG_MANIFEST": str(manifest)},
    )
