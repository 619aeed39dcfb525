"""Where each dataset of the paper comes from: URLs, published checksums, and how to place it.

One table, :data:`SOURCES`, drives the download rules, the manual-placement checks and the
instructions users read when a source cannot be fetched automatically; it is the source and
citation part of each dataset's entry in :mod:`msgfm.data.registry`. Facts and where they were
taken from:

- SEN12MS: mediaTUM record 1474000 (the share also answers on ftp with public credentials; we
  use its https download endpoint); md5s as published in torchgeo's ``sen12ms.py``; split lists
  from the authors' repository schmitt-muc/SEN12MS, kept in ``splits/`` so that the readers
  cannot mistake them for season folders.
- SEN12MS-CR: mediaTUM record 1554803, no checksums published; URL pattern of the authors'
  SEN12MS-CR-TS download script.
- BigEarthNet v1: Zenodo record 12687186 (the TU Berlin re-upload of bigearth.net's archives, same
  md5s as ``bigearthnet_common``); the BigEarthNet-MM train/val/test CSVs pinned to one commit of
  the TU Berlin GitLab; reBEN's ``metadata.parquet`` from Zenodo 10891137 (md5 from third-party
  readers; torchgeo lists a placeholder).
- MDAS: torchgeo's Hugging Face copy of ``Augsburg_data_4_publication.zip``, pinned to a commit,
  because that copy has a published md5 and the mediaTUM share (record 1657312) has none.
- Vaihingen's two ground-truth zips hold their files at the zip root, so they are extracted into
  ``gts_complete/`` and ``gts_eroded/`` (the names the Vaihingen reader expects).
- Vaihingen, SpaceNet2, MillionAID and GeoPile need a form, the AWS CLI or a drive link: their
  entries carry :class:`ManualInstructions` with the exact file names to place.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgfm.errors import UnknownNameError

SEASONS = ("1158_spring", "1868_summer", "1970_fall", "2017_winter")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    ``subdir`` is where inside ``<data_root>/<dataset>/`` the file is extracted (``extract``) or
    copied to; ``md5`` is None only where the provider publishes none.
    """

    name: str
    url: str
    md5: str | None
    extract: bool
    subdir: str = ""


@dataclass(frozen=True)
class ManualInstructions:
    """What a person must do for a source that cannot be fetched by a script.

    ``files`` are the exact names to place in ``<data_root>/archives/<dataset>/`` (their ``url``
    is a direct link or S3 key where one exists, else the page); ``layout`` lists the entries
    of ``<data_root>/<dataset>/`` whose presence shows the files were already extracted by hand.
    """

    url: str
    files: tuple[RemoteFile, ...]
    how: str
    layout: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """A dataset: where it lives, how to cite it, and either its files or manual instructions."""

    name: str
    title: str
    homepage: str
    citation: str
    files: tuple[RemoteFile, ...] = ()
    manual: ManualInstructions | None = None

    def __post_init__(self) -> None:
        if bool(self.files) == (self.manual is not None):
            raise ValueError(f"source {self.name!r}: give either files or manual instructions")


_SEN12MS_MD5 = {
    "1158_spring_lc": "6e2e8fa8b8cba77ddab49fd20ff5c37b",
    "1158_spring_s1": "fba019bb27a08c1db96b31f718c34d79",
    "1158_spring_s2": "d58af2c15a16f376eb3308dc9b685af2",
    "1868_summer_lc": "2c5bd80244440b6f9d54957c6b1f23d4",
    "1868_summer_s1": "01044b7f58d33570c6b57fec28a3d449",
    "1868_summer_s2": "4dbaf72ecb704a4794036fe691427ff3",
    "1970_fall_lc": "9b126a68b0e3af260071b3139cb57cee",
    "1970_fall_s1": "19132e0aab9d4d6862fd42e8e6760847",
    "1970_fall_s2": "b8f117818878da86b5f5e06400eb1866",
    "2017_winter_lc": "0fa0420ef7bcfe4387c7e6fe226dc728",
    "2017_winter_s1": "bb8cbfc16b95a4f054a3d5380e0130ed",
    "2017_winter_s2": "3807545661288dcca312c9c538537b63",
}
_SEN12MS_SPLITS = {
    "train_list.txt": "0a68d4e1eb24f128fccdb930000b2546",
    "test_list.txt": "c7faad064001e646445c4c634169484d",
}


def _mediatum(record: str, name: str) -> str:
    return f"https://dataserv.ub.tum.de/s/{record}/download?path=/&files={name}"


_SEN12MS = Source(
    name="sen12ms",
    title="SEN12MS",
    homepage="https://mediatum.ub.tum.de/1474000",
    citation=(
        "Schmitt, M., Hughes, L. H., Qiu, C., Zhu, X. X. (2019). SEN12MS - A curated dataset of "
        "georeferenced multi-spectral Sentinel-1/2 imagery for deep learning and data fusion. "
        "ISPRS Annals IV-2/W7, 153-160. doi:10.5194/isprs-annals-IV-2-W7-153-2019"
    ),
    files=tuple(
        RemoteFile(f"ROIs{key}.tar.gz", _mediatum("m1474000", f"ROIs{key}.tar.gz"), md5, True)
        for key, md5 in _SEN12MS_MD5.items()
    )
    + tuple(
        RemoteFile(
            name,
            f"https://raw.githubusercontent.com/schmitt-muc/SEN12MS/master/splits/{name}",
            md5,
            False,
            "splits",
        )
        for name, md5 in _SEN12MS_SPLITS.items()
    ),
)

_SEN12MS_CR = Source(
    name="sen12ms_cr",
    title="SEN12MS-CR",
    homepage="https://mediatum.ub.tum.de/1554803",
    citation=(
        "Ebel, P., Meraner, A., Schmitt, M., Zhu, X. X. (2021). Multisensor data fusion for cloud "
        "removal in global and all-season Sentinel-2 imagery. IEEE Transactions on Geoscience "
        "and Remote Sensing 59(7), 5866-5878. doi:10.1109/TGRS.2020.3024744"
    ),
    files=tuple(
        RemoteFile(name, _mediatum("m1554803", name), None, True)
        for sensor in ("s1", "s2", "s2_cloudy")
        for season in SEASONS
        for name in [f"ROIs{season}_{sensor}.tar.gz"]
    ),
)

_BEN_MM_SPLITS = (
    "https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/raw/"
    "9a5be07346ab0884b2d9517475c27ef9db9b5104/splits/{split}.csv?inline=false"
)
_BIGEARTHNET = Source(
    name="bigearthnet",
    title="BigEarthNet v1.0 (Sentinel-2 and Sentinel-1) with the BigEarthNet-MM splits",
    homepage="https://bigearth.net",
    citation=(
        "Sumbul, G., de Wall, A., Kreuziger, T., Marcelino, F., Costa, H., Benevides, P., "
        "Caetano, M., Demir, B., Markl, V. (2021). BigEarthNet-MM: A large-scale, multimodal, "
        "multilabel benchmark archive for remote sensing image classification and retrieval. "
        "IEEE Geoscience and Remote Sensing Magazine 9(3), 174-180. "
        "doi:10.1109/MGRS.2021.3089174"
    ),
    files=(
        RemoteFile(
            "BigEarthNet-S2-v1.0.tar.gz",
            "https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz",
            "5a64e9ce38deb036a435a7b59494924c",
            True,
        ),
        RemoteFile(
            "BigEarthNet-S1-v1.0.tar.gz",
            "https://zenodo.org/records/12687186/files/BigEarthNet-S1-v1.0.tar.gz",
            "94ced73440dea8c7b9645ee738c5a172",
            True,
        ),
        RemoteFile(
            "train.csv",
            _BEN_MM_SPLITS.format(split="train"),
            "623e501b38ab7b12fe44f0083c00986d",
            False,
            "splits",
        ),
        RemoteFile(
            "val.csv",
            _BEN_MM_SPLITS.format(split="val"),
            "22efe8ed9cbd71fa10742ff7df2b7978",
            False,
            "splits",
        ),
        RemoteFile(
            "test.csv",
            _BEN_MM_SPLITS.format(split="test"),
            "697fb90677e30571b9ac7699b7e5b432",
            False,
            "splits",
        ),
        RemoteFile(
            "metadata.parquet",
            "https://zenodo.org/records/10891137/files/metadata.parquet",
            "55687065e77b6d0b0f1ff604a6e7b49c",
            False,
        ),
    ),
)

_MDAS = Source(
    name="mdas",
    title="MDAS: multimodal data set of Augsburg",
    homepage="https://mediatum.ub.tum.de/1657312",
    citation=(
        "Hu, J., Liu, R., Hong, D., Camero, A., Yao, J., Schneider, M., Kurz, F., Segl, K., "
        "Zhu, X. X. (2023). MDAS: a new multimodal benchmark dataset for remote sensing. "
        "Earth System Science Data 15(1), 113-131. doi:10.5194/essd-15-113-2023"
    ),
    files=(
        RemoteFile(
            "Augsburg_data_4_publication.zip",
            "https://huggingface.co/datasets/torchgeo/mdas/resolve/"
            "860226b74269f1cf1bed8ea3c03f571ae701144c/Augsburg_data_4_publication.zip",
            "7b63c26e3717cb52c6ba47d215f18d5b",
            True,
        ),
    ),
)

_VAIHINGEN_PAGE = (
    "https://www.isprs.org/resources/datasets/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx"
)
_VAIHINGEN = Source(
    name="vaihingen",
    title="ISPRS 2D Semantic Labeling Contest - Vaihingen",
    homepage=_VAIHINGEN_PAGE,
    citation=(
        "Rottensteiner, F., Sohn, G., Jung, J., Gerke, M., Baillard, C., Benitez, S., Breitkopf, "
        "U. (2012). The ISPRS benchmark on urban object classification and 3D building "
        "reconstruction. ISPRS Annals I-3, 293-298. doi:10.5194/isprsannals-I-3-293-2012"
    ),
    manual=ManualInstructions(
        url=_VAIHINGEN_PAGE,
        files=(
            RemoteFile(
                "ISPRS_semantic_labeling_Vaihingen.zip",
                _VAIHINGEN_PAGE,
                "462b8dca7b6fa9eaf729840f0cdfc7f3",
                True,
            ),
            RemoteFile(
                "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
                _VAIHINGEN_PAGE,
                "4802dd6326e2727a352fb735be450277",
                True,
                "gts_complete",
            ),
            RemoteFile(
                "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
                _VAIHINGEN_PAGE,
                None,
                True,
                "gts_eroded",
            ),
        ),
        how=(
            "The ISPRS does not allow redistribution: fill in the data request form linked from "
            "the benchmark page; the download link arrives by e-mail."
        ),
        layout=("top", "dsm", "gts_complete", "gts_eroded"),
    ),
)

_SPACENET_S3 = "s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/"
_SPACENET_AOIS = {
    "AOI_2_Vegas": "307da318bc43aaf9481828f92eda9126",
    "AOI_3_Paris": "4db469e3e4e7bf025368ad730aec0888",
    "AOI_4_Shanghai": "986129eecd3e842ebc2063d43b407adb",
    "AOI_5_Khartoum": "462b4bf0466c945d708befabd4d9115b",
}
_SPACENET2 = Source(
    name="spacenet2",
    title="SpaceNet 2: building detection (Las Vegas, Paris, Shanghai, Khartoum)",
    homepage="https://spacenet.ai/spacenet-buildings-dataset-v2/",
    citation=(
        "Van Etten, A., Lindenbaum, D., Bacastow, T. M. (2018). SpaceNet: A remote sensing "
        "dataset and challenge series. arXiv:1807.01232"
    ),
    manual=ManualInstructions(
        url="https://spacenet.ai/spacenet-buildings-dataset-v2/",
        files=tuple(
            RemoteFile(name, _SPACENET_S3 + name, md5, True)
            for aoi, md5 in _SPACENET_AOIS.items()
            for name in [f"SN2_buildings_train_{aoi}.tar.gz"]
        ),
        how=(
            "The tarballs sit in the public AWS bucket spacenet-dataset; copy them with the AWS "
            "CLI, which reads its own credentials (add --no-sign-request without an AWS account)."
        ),
        layout=tuple(f"{aoi}_Train" for aoi in _SPACENET_AOIS),
    ),
)

_MILLIONAID_PAGE = "https://captain-whu.github.io/DiRS/"
_MILLIONAID = Source(
    name="millionaid",
    title="Million-AID",
    homepage=_MILLIONAID_PAGE,
    citation=(
        "Long, Y., Xia, G.-S., Li, S., Yang, W., Yang, M. Y., Zhu, X. X., Zhang, L., Li, D. "
        "(2021). On creating benchmark dataset for aerial image interpretation: reviews, "
        "guidances, and Million-AID. IEEE Journal of Selected Topics in Applied Earth "
        "Observations and Remote Sensing 14, 4205-4230. doi:10.1109/JSTARS.2021.3070368"
    ),
    manual=ManualInstructions(
        url=_MILLIONAID_PAGE,
        files=(
            RemoteFile("train.zip", _MILLIONAID_PAGE, "1b40503cafa9b0601653ca36cd788852", True),
            RemoteFile("test.zip", _MILLIONAID_PAGE, "51a63ee3eeb1351889eacff349a983d8", True),
        ),
        how=(
            "The archives are shared through cloud-drive links on the Million-AID page. The "
            "test set comes in 17 parts, test.zip.001 … test.zip.017 (plain byte splits of one "
            "zip): put them in the folder below and join them there with "
            "`cat test.zip.0?? > test.zip` (Windows: `copy /b test.zip.001+test.zip.002+…"
            "+test.zip.017 test.zip`), then delete the parts; or unpack them with "
            "`7z x test.zip.001` into the dataset folder named at the end."
        ),
        layout=("train", "test"),
    ),
)

_GEOPILE_LINK = "https://1drv.ms/f/s!AkTn76m907OThpRJjH8ehfskbgCLXw?e=ZJreFo"
_GEOPILE = Source(
    name="geopile",
    title="GeoPile (GFM pretraining corpus)",
    homepage="https://github.com/mmendiet/GFM",
    citation=(
        "Mendieta, M., Han, B., Shi, X., Zhu, Y., Chen, C. (2023). Towards geospatial foundation "
        "models via continual pretraining. ICCV 2023, 16806-16816. arXiv:2302.04476"
    ),
    manual=ManualInstructions(
        url=_GEOPILE_LINK,
        files=(RemoteFile("GeoPileV0.zip", _GEOPILE_LINK, None, True),),
        how=(
            "The GFM authors share GeoPile in a OneDrive folder (no checksum published). "
            "Download it as GeoPileV0.zip, or unpack it yourself so that GeoPileV0/ exists."
        ),
        layout=("GeoPileV0",),
    ),
)

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        _SEN12MS,
        _SEN12MS_CR,
        _BIGEARTHNET,
        _MDAS,
        _VAIHINGEN,
        _SPACENET2,
        _MILLIONAID,
        _GEOPILE,
    )
}


def get_source(dataset: str) -> Source:
    """The registry entry of ``dataset``; the error lists the known names."""
    try:
        return SOURCES[dataset]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset {dataset!r}; known: {', '.join(sorted(SOURCES))}"
        ) from None
