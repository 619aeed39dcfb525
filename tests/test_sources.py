"""The dataset registry is complete and well-formed: what the download rules rely on."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from msgfm.data.extract import is_archive
from msgfm.data.sources import SOURCES, ManualInstructions, RemoteFile, Source, get_source

DATASETS = (
    "sen12ms",
    "sen12ms_cr",
    "bigearthnet",
    "mdas",
    "vaihingen",
    "spacenet2",
    "millionaid",
    "geopile",
)
MANUAL = {"vaihingen", "spacenet2", "millionaid", "geopile"}


def _files(source: Source) -> tuple[RemoteFile, ...]:
    return source.manual.files if source.manual else source.files


def test_every_dataset_is_registered_under_its_name() -> None:
    assert sorted(SOURCES) == sorted(DATASETS)
    assert all(SOURCES[name].name == name for name in DATASETS)
    assert {name for name, s in SOURCES.items() if s.manual is not None} == MANUAL


@pytest.mark.parametrize("name", DATASETS)
def test_source_is_well_formed(name: str) -> None:
    source = SOURCES[name]
    assert source.homepage.startswith("https://")
    assert len(source.citation) > 40 and re.search(r"\b(19|20)\d\d\b", source.citation)
    files = _files(source)
    assert files
    assert len({f.name for f in files}) == len(files), "names must be unique (mirror paths)"
    for f in files:
        assert "/" not in f.name
        assert f.md5 is None or re.fullmatch(r"[0-9a-f]{32}", f.md5), f.name
        assert not f.subdir.startswith("/") and ".." not in f.subdir.split("/")
        assert f.extract == is_archive(f.name), f.name
        assert urlsplit(f.url).username is None, "no credentials in the registry"


@pytest.mark.parametrize("name", sorted(set(DATASETS) - MANUAL))
def test_automatic_sources_use_https(name: str) -> None:
    for f in SOURCES[name].files:
        assert urlsplit(f.url).scheme == "https", f.url


@pytest.mark.parametrize("name", sorted(MANUAL))
def test_manual_sources_say_where_and_what(name: str) -> None:
    manual = SOURCES[name].manual
    assert isinstance(manual, ManualInstructions)
    assert manual.url.startswith("https://")
    assert manual.how.strip() and manual.layout
    assert all(urlsplit(f.url).scheme in ("https", "s3") for f in manual.files)


def test_published_facts_are_the_expected_ones() -> None:
    sen12ms = {f.name: f for f in SOURCES["sen12ms"].files}
    assert len([n for n in sen12ms if n.endswith(".tar.gz")]) == 12
    assert sen12ms["ROIs1158_spring_s2.tar.gz"].md5 == "d58af2c15a16f376eb3308dc9b685af2"
    assert "m1474000" in sen12ms["ROIs1158_spring_s2.tar.gz"].url
    assert sen12ms["train_list.txt"].subdir == "splits"

    cr = SOURCES["sen12ms_cr"].files
    assert len(cr) == 12 and all(f.md5 is None and "m1554803" in f.url for f in cr)
    assert {f.name for f in cr} >= {"ROIs2017_winter_s2_cloudy.tar.gz", "ROIs1158_spring_s1.tar.gz"}

    ben = {f.name: f for f in SOURCES["bigearthnet"].files}
    assert ben["BigEarthNet-S2-v1.0.tar.gz"].md5 == "5a64e9ce38deb036a435a7b59494924c"
    assert ben["BigEarthNet-S1-v1.0.tar.gz"].md5 == "94ced73440dea8c7b9645ee738c5a172"
    assert {ben[n].subdir for n in ("train.csv", "val.csv", "test.csv")} == {"splits"}
    assert ben["metadata.parquet"].md5 == "55687065e77b6d0b0f1ff604a6e7b49c"
    assert not ben["metadata.parquet"].extract and "10891137" in ben["metadata.parquet"].url

    vaihingen = {f.name: f for f in SOURCES["vaihingen"].manual.files}
    assert vaihingen["ISPRS_semantic_labeling_Vaihingen.zip"].md5 == (
        "462b8dca7b6fa9eaf729840f0cdfc7f3"
    )
    spacenet = SOURCES["spacenet2"].manual.files
    assert all(f.url.startswith("s3://spacenet-dataset/spacenet/SN2_buildings/") for f in spacenet)


def test_registry_rejects_ambiguous_entries_and_names_unknown_datasets() -> None:
    with pytest.raises(ValueError, match="either files or manual"):
        Source("x", "X", "https://x", "c")
    with pytest.raises(KeyError, match="known: bigearthnet"):
        get_source("imagenet")


def test_unknown_dataset_is_one_line_from_the_cli(tmp_path, capsys) -> None:
    from msgfm.cli import main

    assert main(["prepare", "nosuchset", "--data-root", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown dataset 'nosuchset'" in line and "known: bigearthnet" in line


def test_millionaid_instructions_say_how_to_join_the_test_parts(tmp_path) -> None:
    from msgfm.data.download import check_manual
    from msgfm.errors import ManualDownloadRequired

    with pytest.raises(ManualDownloadRequired) as info:
        check_manual("millionaid", tmp_path)
    message = str(info.value)
    assert f"Put these files into {tmp_path / 'archives' / 'millionaid'}/" in message
    assert "test.zip.001 … test.zip.017" in message
    assert "cat test.zip.0?? > test.zip" in message
