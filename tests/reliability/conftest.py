"""Fixtures of the reliability suite (helpers: reliability_helpers.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_helpers import STARTED


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs of this suite use one thread too (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """A failing test must not leave a training running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def signal_safe():
    """Restore SIGINT/SIGTERM handlers after a test that trains in-process."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
