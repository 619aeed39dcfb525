"""The workflow config as a run sees it, read from its files outside Snakemake.

For the verbs and tests that plan without running Snakemake (``estimate-cost``, the tests'
job configs), so they cannot plan another config than ``snakemake --configfile ...`` would.
Kept apart from msgfm.config_checks, which the jobs import without Snakemake in their env.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from snakemake.utils import update_config, validate

from msgfm.config_checks import check_config
from msgfm.schema_errors import schema_errors_in_one_line

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def load_config(
    paths: Iterable[str | Path], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config a workflow run sees: ``paths`` merged in order (``--configfile``: later keys
    win, nested mappings merge), then ``overrides`` (``--config``), validated with every
    schema default filled in and checked as the Snakefile checks it. For the verbs and tests
    that plan outside Snakemake (``estimate-cost``), so they cannot plan another config."""
    config: dict[str, Any] = {}
    for path in paths:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    update_config(config, copy.deepcopy(dict(overrides or {})))
    with schema_errors_in_one_line():
        validate(config, str(SCHEMA))
    check_config(config)
    return config
