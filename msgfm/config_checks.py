"""Config mistakes caught when the workflow is planned, not in a job hours later.

The schema (workflow/schemas/config.schema.yaml) checks each value alone; what it cannot see is
checked here with the rules the jobs themselves apply (msgfm.model.config for the network, this
module's ``check_mdas_resize`` for the MDAS tiler, msgfm.data.registry for the downstream tilers'
options), so ``snakemake -n`` refuses what a job would.
Torch-free: Snakemake imports it while it parses the Snakefile.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from msgfm import plan
from msgfm.data.registry import dataset_spec
from msgfm.model.config import check_input_size, encoder_stride, resolve_config

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def load_config(
    paths: Iterable[str | Path], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config a workflow run sees: ``paths`` merged in order (``--configfile``: later keys
    win, nested mappings merge), then ``overrides`` (``--config``), validated with every
    schema default filled in and checked as the Snakefile checks it. For the verbs and tests
    that plan outside Snakemake (``estimate-cost``), so they cannot plan another config."""
    import yaml
    from snakemake.utils import update_config, validate

    from msgfm.schema_errors import schema_errors_in_one_line

    config: dict[str, Any] = {}
    for path in paths:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    update_config(config, copy.deepcopy(dict(overrides or {})))
    with schema_errors_in_one_line():
        validate(config, str(SCHEMA))
    check_config(config)
    return config


def check_mdas_resize(tile: int, mdas_resize: int) -> None:
    """MDAS windows are resized to ``mdas_resize`` and cut into whole ``tile``² tiles
    (paper §3.3): a size that is not a multiple of the tile would drop a border or give none."""
    if mdas_resize % tile:
        raise ValueError(
            f"tiling.mdas_resize {mdas_resize} must be a multiple of tiling.tile {tile}"
        )


def check_config(config: Mapping[str, Any]) -> None:
    """Raise a one-line ValueError (OptionError for a tiler's options) for the first setting
    no planned job could run with."""
    tiling = config["tiling"]
    if "mdas" in config["pretrain_sources"]:
        check_mdas_resize(tiling["tile"], tiling["mdas_resize"])
    for task, options in tiling["downstream"].items():
        dataset_spec(task, downstream=True).tiler_settings(options, f"tiling.downstream.{task}")
    resolved = resolve_config(config["model"])  # also the random and IN-22k inits' model
    variants = plan.pretrain_variants(config)
    for variant in variants:
        resolve_config(plan.variant_model(config["model"], config["variants"][variant]))
    if variants and resolved["img_size"] != tiling["tile"]:
        raise ValueError(
            f"model.img_size {resolved['img_size']} must equal tiling.tile {tiling['tile']}: "
            "pretraining feeds the tiles to the encoder as they are"
        )
    settings = config["finetune"]
    for task in config["downstream_tasks"]:
        own = settings["tasks"].get(task, {})
        size = own.get("img_size", settings["defaults"].get("img_size"))
        if size is not None:
            where = f"tasks.{task}" if "img_size" in own else "defaults"
            stride = encoder_stride(resolved)
            check_input_size(size, stride, resolved["window_size"], f"finetune.{where}.img_size")
