"""Fixtures shared by every test: a private ctrappliance daemon (`daemon`, `shared_daemon`) and
Debian's containerd 1.6.20 beside it for differential tests."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/

from daemon import Daemon  # noqa: E402
from reference import Containerd  # noqa: E402


@pytest.fixture
def daemon():
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def shared_daemon():
    """One daemon for a module of read-mostly tests (each test uses its own namespace)."""
    d = Daemon().start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def both():
    """ctrappliance and containerd 1.6.20 side by side, each on private paths."""
    ours, theirs = Daemon(), Containerd()
    try:
        ours.start()
        theirs.start()
        yield ours, theirs
    finally:
        ours.cleanup()
        theirs.cleanup()
