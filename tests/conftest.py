"""Shared fixtures: the generated demo datasets, made once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from host_sync import HostSyncCounter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All eight demo datasets in their real layouts (seconds to make, tens of MB)."""
    from msgfm.data.demo import write_demo

    root = tmp_path_factory.mktemp("demo-data")
    write_demo(root, seed=0)
    return root


@pytest.fixture(scope="session")
def demo_config() -> dict[str, Any]:
    """The demo workflow's config (config.yaml, then demo.yaml, schema defaults filled in).
    Tests build their jobs from it (msgfm.plan), so a schema or demo change reaches them;
    treat it as read-only (copy before changing: it is shared by the session)."""
    from msgfm.config_files import load_config

    return load_config([REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml"])


@pytest.fixture(scope="session")
def pretrain_shards(
    demo_root: Path, demo_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Every demo pretraining dataset tiled as the demo workflow tiles it, one shard set per
    dataset (the layout of results/shards/pretrain), made once per session."""
    from msgfm.data.tiling.pretrain import tile_pretrain

    tiling = demo_config["tiling"]
    root = tmp_path_factory.mktemp("pretrain-shards")
    for dataset in demo_config["pretrain_sources"]:
        tile_pretrain(
            dataset, demo_root, root / dataset, tile=tiling["tile"],
            mdas_resize=tiling["mdas_resize"], mdas_window=tiling["mdas_window"],
            rows_per_shard=tiling["rows_per_shard"],
        )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def downstream_shards(
    demo_root: Path, demo_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Every demo downstream task tiled as the demo workflow tiles it (its tiler options from
    the config), the layout of results/shards/downstream, made once per session."""
    from msgfm.data.tiling.downstream import tile_downstream

    options = demo_config["tiling"]["downstream"]
    root = tmp_path_factory.mktemp("downstream-shards")
    for task in demo_config["downstream_tasks"]:
        tile_downstream(task, demo_root, root / task, **options.get(task, {}))
    return root


@pytest.fixture
def host_syncs() -> HostSyncCounter:
    """A fresh HostSyncCounter (tests/host_sync.py): ``with host_syncs: ...`` then ``.calls``."""
    return HostSyncCounter()
