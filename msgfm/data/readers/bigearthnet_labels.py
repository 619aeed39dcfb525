"""BigEarthNet's two label sets: the 43 CORINE Land Cover names and the 19-class nomenclature.

BigEarthNet v1 ships, per patch, the CLC level-3 names present in it (43 possible). The
19-class nomenclature of Sumbul et al. (2021), used by BigEarthNet-MM, reBEN (v2) and the
paper's scene-classification task, merges related CLC classes and drops eleven that cannot
be told apart in a 1.2 km Sentinel patch: road/rail, port, airports, mineral
extraction, dump sites, construction, green urban areas, sport/leisure, bare rock, burnt
areas and intertidal flats. A patch whose only labels are dropped ones has an all-zero target.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from msgfm.errors import DataError

CLC43_NAMES: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

CLASS19_NAMES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

# Which 19-class label each CLC name counts towards; None = dropped from the 19-class task.
# Grouped by the 19-class label so the merges are easy to check against the nomenclature.
CLC43_TO_19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Pastures": "Pastures",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
    # Not separable at Sentinel resolution: no 19-class counterpart.
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Bare rock": None,
    "Burnt areas": None,
    "Intertidal flats": None,
}

_CLASS19_INDEX = {name: i for i, name in enumerate(CLASS19_NAMES)}


def targets_from_clc43(labels: Iterable[str], *, source: str | Path = "<labels>") -> np.ndarray:
    """Multi-hot uint8 vector (19,) from a patch's CLC names (BigEarthNet v1 JSON)."""
    target = np.zeros(len(CLASS19_NAMES), dtype=np.uint8)
    for label in labels:
        if label not in CLC43_TO_19:
            raise DataError(source, f"unknown CORINE label {label!r} (not one of the 43)")
        merged = CLC43_TO_19[label]
        if merged is not None:
            target[_CLASS19_INDEX[merged]] = 1
    return target


def targets_from_class19(labels: Iterable[str], *, source: str | Path = "<labels>") -> np.ndarray:
    """Multi-hot uint8 vector (19,) from 19-class names (BigEarthNet v2 metadata.parquet)."""
    target = np.zeros(len(CLASS19_NAMES), dtype=np.uint8)
    for label in labels:
        if label not in _CLASS19_INDEX:
            raise DataError(source, f"unknown 19-class label {label!r}")
        target[_CLASS19_INDEX[label]] = 1
    return target
