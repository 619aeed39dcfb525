"""Config mistakes caught when the workflow is planned, not in a job hours later.

The schema (workflow/schemas/config.schema.yaml) checks each value alone; what it cannot see is
checked here with the rules the jobs themselves apply (msgfm.model.config for the network, this
module's ``check_mdas_resize`` for the MDAS tiler, msgfm.data.registry for the downstream tilers'
options), so ``snakemake -n`` refuses what a job would.
Torch-free: Snakemake imports it while it parses the Snakefile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgfm import plan
from msgfm.data.registry import dataset_spec
from msgfm.model.config import check_input_size, encoder_stride, resolve_config


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
