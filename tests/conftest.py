"""Shared fixtures: the generated demo datasets, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from host_sync import HostSyncCounter


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All eight demo datasets in their real layouts (seconds to make, tens of MB)."""
    from msgfm.data.demo import write_demo

    root = tmp_path_factory.mktemp("demo-data")
    write_demo(root, seed=0)
    return root


@pytest.fixture
def host_syncs() -> HostSyncCounter:
    """A fresh HostSyncCounter (tests/host_sync.py): ``with host_syncs: ...`` then ``.calls``."""
    return HostSyncCounter()
