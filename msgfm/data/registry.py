"""The eight datasets of the paper, each declared once (torchgeo's dataset classes are the model).

A :class:`DatasetSpec` says what the workflow needs to know about a dataset: where it comes
from and how to cite it (its :class:`msgfm.data.sources.Source`), the reader of its on-disk
layout (whose docstring holds layout, bands and splits), the demo writer that fakes that layout,
and for a downstream dataset the finetuning task and the tiler with its options. Everything that
lists datasets derives from :data:`DATASETS`: the demo, the tilers, the finetuning task table,
the config checks, and a test holds the config schema's enums to it.

Snakemake imports this module while it parses the Snakefile (msgfm.config_checks), and the
download and tiling jobs before they know which reader they need, so it imports neither torch
nor rasterio: readers, tilers and demo writers are named by import path and imported on use.
That is also why the entries live here and not in the reader modules, which import rasterio.

Adding a dataset touches its reader and demo writer (their own modules), one entry here, its
source in msgfm.data.sources, for a downstream dataset its row function in
msgfm.data.tiling.downstream, its tests, and the config: the schema's enums (tests/test_registry.py
holds them to this list) and config/*.yaml.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgfm.data.sources import Source, get_source
from msgfm.errors import OptionError, UnknownNameError


@dataclass(frozen=True)
class TaskSpec:
    """What a downstream task feeds the model and what it predicts.

    ``inputs`` pairs each shard role with the model sensor whose stem reads it, in stacking
    order; ``num_outputs`` is the class count or the target's band count; ``guide`` is an input
    role whose full-resolution image also feeds the regression decoder (SpaceNet2's PAN).
    """

    name: str
    kind: str  # "classification" (multi-label), "regression" or "segmentation"
    inputs: tuple[tuple[str, str], ...]
    target: str
    num_outputs: int
    ignore_index: int | None = None
    guide: str | None = None

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(sensor for _, sensor in self.inputs)

    @property
    def roles(self) -> tuple[str, ...]:
        """The shard roles the task's tiler writes: its inputs, then its target."""
        return (*(role for role, _ in self.inputs), self.target)


def _load(path: str) -> Any:
    """``"package.module:name"`` → the object, importing its module only now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the paper.

    ``reader`` and ``demo_writer`` are import paths (``"module:name"``) of the reader class and
    of the function that writes the demo copy in the real layout. A pretraining source gives the
    roles of its tiles (``tile_roles``); a downstream dataset gives its finetuning ``task``, the
    function that cuts a read sample into shard rows (``tiler``) and that tiler's options with
    their defaults (``tiler_options``, set per task in the config's ``tiling.downstream``).
    """

    name: str
    reader: str
    demo_writer: str
    tile_roles: tuple[str, ...] = ()
    task: TaskSpec | None = None
    tiler: str | None = None
    tiler_options: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.task is None) != (self.tiler is None) or bool(self.tile_roles) == bool(self.task):
            raise ValueError(
                f"dataset {self.name!r}: give tile_roles (pretraining) or task and tiler "
                "(downstream)"
            )

    @property
    def downstream(self) -> bool:
        return self.task is not None

    @property
    def source(self) -> Source:
        """Where the dataset comes from and its citation (msgfm.data.sources)."""
        return get_source(self.name)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles of the shard set tiled from this dataset."""
        return self.task.roles if self.task is not None else self.tile_roles

    def open_reader(self, data_root: str | Path) -> Any:
        """The reader over ``<data_root>/<name>`` (all splits)."""
        return _load(self.reader)(Path(data_root) / self.name)

    def write_demo(self, folder: Path, rng: Any) -> None:
        """Write the demo copy of the dataset into ``folder`` from the generator ``rng``."""
        _load(self.demo_writer)(folder, rng)

    def tiler_function(self) -> Callable[..., Any]:
        if self.tiler is None:
            raise ValueError(f"{self.name} is a pretraining source; it has no downstream tiler")
        return _load(self.tiler)

    def tiler_settings(self, options: Mapping[str, Any], where: str = "") -> dict[str, int]:
        """The tiler's options with ``options`` over the defaults; a one-line error names the
        first key it does not take or whose value is not a positive integer."""
        where = where or self.name
        for key, value in options.items():
            if key not in self.tiler_options:
                known = ", ".join(self.tiler_options) or "none"
                raise OptionError(f"{where}: unknown option {key!r}; expected one of: {known}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{where}.{key}: expected a positive integer, got {value!r}")
        return {**self.tiler_options, **options}


_DOWNSTREAM_TILER = "msgfm.data.tiling.downstream"

# Order matters: the demo seeds each dataset's random stream with its position here.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "sen12ms",
            reader="msgfm.data.readers.sen12ms:SEN12MS",
            demo_writer="msgfm.data.demo.sen12ms:write",
            tile_roles=("sar", "s2"),
        ),
        DatasetSpec(
            "sen12ms_cr",
            reader="msgfm.data.readers.sen12ms_cr:SEN12MSCR",
            demo_writer="msgfm.data.demo.sen12ms_cr:write",
            task=TaskSpec(
                "sen12ms_cr", "regression", (("sar", "sar"), ("s2_cloudy", "s2")), "s2", 13
            ),
            tiler=f"{_DOWNSTREAM_TILER}:sen12ms_cr_rows",
        ),
        DatasetSpec(
            "bigearthnet",
            reader="msgfm.data.readers.bigearthnet:BigEarthNet",
            demo_writer="msgfm.data.demo.bigearthnet:write",
            task=TaskSpec(
                "bigearthnet", "classification", (("s2", "s2"), ("sar", "sar")), "target", 19
            ),
            tiler=f"{_DOWNSTREAM_TILER}:bigearthnet_rows",
        ),
        DatasetSpec(
            "mdas",
            reader="msgfm.data.readers.mdas:MDAS",
            demo_writer="msgfm.data.demo.mdas:write",
            tile_roles=("rgb", "dsm"),
        ),
        DatasetSpec(
            "vaihingen",
            reader="msgfm.data.readers.vaihingen:Vaihingen",
            demo_writer="msgfm.data.demo.vaihingen:write",
            task=TaskSpec(
                "vaihingen", "segmentation", (("rgb", "rgb"), ("dsm", "dsm")), "label", 6, 255
            ),
            tiler=f"{_DOWNSTREAM_TILER}:vaihingen_rows",
            tiler_options={"crop": 512, "stride": 256},  # GFM's crops
        ),
        DatasetSpec(
            "spacenet2",
            reader="msgfm.data.readers.spacenet2:SpaceNet2",
            demo_writer="msgfm.data.demo.spacenet2:write",
            task=TaskSpec(
                "spacenet2",
                "regression",
                (("mul", "mul"), ("pan", "pan")),
                "pansharpened",
                8,
                guide="pan",
            ),
            tiler=f"{_DOWNSTREAM_TILER}:spacenet2_rows",
            # MUL images vary by a pixel or two around 162² and a batch needs one shape.
            tiler_options={"mul_size": 162, "pan_size": 650},
        ),
        DatasetSpec(
            "millionaid",
            reader="msgfm.data.readers.rgb_collections:MillionAID",
            demo_writer="msgfm.data.demo.rgb_collections:write_millionaid",
            tile_roles=("rgb",),
        ),
        DatasetSpec(
            "geopile",
            reader="msgfm.data.readers.rgb_collections:GeoPile",
            demo_writer="msgfm.data.demo.rgb_collections:write_geopile",
            tile_roles=("rgb",),
        ),
    )
}
PRETRAIN_SOURCES: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if not s.downstream)
DOWNSTREAM_TASKS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.downstream)


def dataset_spec(name: str, *, downstream: bool | None = None) -> DatasetSpec:
    """The spec of ``name``; with ``downstream`` given, only a downstream dataset (True) or a
    pretraining source (False) is accepted. The error lists the names that would be."""
    names = {None: tuple(DATASETS), True: DOWNSTREAM_TASKS, False: PRETRAIN_SOURCES}[downstream]
    if name not in names:
        kind = {None: "dataset", True: "downstream task", False: "pretraining source"}[downstream]
        raise UnknownNameError(f"unknown {kind} {name!r}; expected one of: {', '.join(names)}")
    return DATASETS[name]
