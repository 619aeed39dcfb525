"""The "dataset ready" marker: written last, atomically, once a dataset folder is complete.

Snakemake rules depend on this file rather than on the dataset folder itself, so a
half-extracted download or an interrupted demo generation never looks complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from msgfm.errors import DataError
from msgfm.files import write_json_atomic

MARKER_NAME = ".msgfm-ready.json"


def marker_path(folder: str | Path) -> Path:
    return Path(folder) / MARKER_NAME


def write_ready_marker(folder: str | Path, dataset: str, *, origin: str, **extra: Any) -> Path:
    """Record that ``folder`` holds a complete copy of ``dataset`` and where it came from."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, f"{dataset}: cannot mark a missing folder as ready")
    payload = {
        "dataset": dataset,
        "origin": origin,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    return write_json_atomic(marker_path(folder), payload)
