"""The dataset registry is the one list of datasets: the schema, the demo, the sources and the
tilers agree with it, and a tiler's options are checked against it in one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from msgfm import cli
from msgfm.data.demo import DEMO_DATASETS
from msgfm.data.readers.base import DatasetReader
from msgfm.data.registry import (
    DATASETS,
    DOWNSTREAM_TASKS,
    PRETRAIN_SOURCES,
    _load,
    dataset_spec,
)
from msgfm.data.shards import ShardSet
from msgfm.data.sources import SOURCES
from msgfm.errors import OptionError, UnknownNameError

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def _enums(node: Any, path: str = "") -> Iterator[tuple[str, list[Any]]]:
    """Every ``enum`` of the schema with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "enum" and isinstance(value, list):
                yield path, value
            else:
                yield from _enums(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            yield from _enums(item, path)


def test_the_schemas_dataset_enums_are_the_registrys() -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    expected = {"pretrain": set(PRETRAIN_SOURCES), "downstream": set(DOWNSTREAM_TASKS)}
    found: dict[str, list[str]] = {"pretrain": [], "downstream": []}
    for where, values in _enums(schema):
        if not set(values) & set(DATASETS):
            continue  # an enum of something else (backends, transfers, ...)
        kind = "downstream" if set(values) & set(DOWNSTREAM_TASKS) else "pretrain"
        assert set(values) == expected[kind], f"{where}: {values}"
        assert len(values) == len(set(values)), where
        found[kind].append(where)
    # pretrain_sources and pretrain.sources.*.datasets; downstream_tasks, the grids' tasks,
    # finetune.tasks and tiling.downstream.
    assert len(found["pretrain"]) >= 2 and len(found["downstream"]) >= 4, found


def test_every_dataset_has_a_source_a_reader_and_a_demo_writer() -> None:
    assert set(SOURCES) == set(DATASETS)
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.source.name == name
        reader = _load(spec.reader)
        assert issubclass(reader, DatasetReader) and reader.__doc__, name
        assert callable(_load(spec.demo_writer)), name
        if spec.downstream:
            assert callable(spec.tiler_function()), name


def test_the_demo_keeps_its_order_so_each_datasets_random_stream_stays() -> None:
    assert DEMO_DATASETS == (
        "sen12ms", "sen12ms_cr", "bigearthnet", "mdas",
        "vaihingen", "spacenet2", "millionaid", "geopile",
    )  # fmt: skip


def test_a_pretraining_source_and_a_task_are_asked_for_by_kind() -> None:
    assert dataset_spec("mdas", downstream=False).roles == ("rgb", "dsm")
    assert dataset_spec("spacenet2", downstream=True).roles == ("mul", "pan", "pansharpened")
    with pytest.raises(UnknownNameError, match="unknown downstream task 'mdas'; expected one of"):
        dataset_spec("mdas", downstream=True)
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'"):
        dataset_spec("imagenet")


@pytest.mark.parametrize(
    ("task", "options", "words"),
    [
        ("spacenet2", {"crop": 3}, ["spacenet2: unknown option 'crop'", "mul_size, pan_size"]),
        ("vaihingen", {"stride": 0}, ["vaihingen.stride: expected a positive integer, got 0"]),
        ("vaihingen", {"crop": "512"}, ["vaihingen.crop", "got '512'"]),
        ("bigearthnet", {"crop": 8}, ["unknown option 'crop'", "expected one of: none"]),
    ],
)
def test_a_tiler_option_it_does_not_take_is_named_in_one_line(task, options, words) -> None:
    with pytest.raises(OptionError) as caught:
        dataset_spec(task).tiler_settings(options)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_the_tilers_defaults_are_the_papers() -> None:
    assert dataset_spec("spacenet2").tiler_settings({"mul_size": 160}) == {
        "mul_size": 160,
        "pan_size": 650,
    }
    assert dataset_spec("vaihingen").tiler_settings({}) == {"crop": 512, "stride": 256}


def test_tile_downstream_takes_the_tasks_options_as_json(demo_root, tmp_path, capsys) -> None:
    """SpaceNet2's MUL side is set from the config, as Vaihingen's crops are."""
    out = tmp_path / "spacenet2"
    argv = ["tile-downstream", "spacenet2", "--data-root", str(demo_root), "--out", str(out)]
    assert cli.main([*argv, "--options-json", json.dumps({"mul_size": 96})]) == 0
    shards = ShardSet(out)
    assert shards.meta["roles"]["mul"]["shape"] == [8, 96, 96]
    assert shards.meta["mul_size"] == 96 and shards.meta["pan_size"] == 650
    assert np.asarray(shards.get(0)["mul"]).shape == (8, 96, 96)
    capsys.readouterr()

    for bad, words in (
        ('{"crop": 256}', ["unknown option 'crop'", "mul_size, pan_size"]),
        ("[1, 2]", ["--options-json: expected a JSON object"]),
        ("{mul_size: 96}", ["--options-json: expected a JSON object"]),
    ):
        assert cli.main([*argv, "--options-json", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(word in err for word in words), err
