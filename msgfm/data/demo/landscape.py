"""A latent land-cover field per location, rendered consistently for every sensor.

The demo data must behave like the real thing where it matters to the pipeline: paired
sensors (SAR+S2, RGB+DSM) must share structure so cross-sensor reconstruction has something
to learn, and downstream labels must follow from the pixels so finetuning can beat random
init. So every demo location starts from one smooth random land-cover map plus a terrain
height field; each sensor renders that same map with its own physics-flavoured signature
(spectral reflectance, radar backscatter with speckle, colour, height) and its own noise.

The Sentinel data that pretraining and BigEarthNet share (SEN12MS, BigEarthNet) add what makes
unlabelled scenes worth pretraining on: within-class structure (``Landscape.with_structure``:
fields are strips of crop and soil with no spectrum of their own, so telling cropland from
pasture beside bare ground takes spatial context) and per-acquisition conditions
(``Acquisition``: sun, haze, season, radar incidence), so one cover's spectrum varies between
scenes. Flat class blobs with fixed spectra made every label a per-pixel colour lookup, which a
random network learns from two labelled patches as fast as a pretrained one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLASSES: tuple[str, ...] = (
    "water", "forest", "grassland", "cropland", "impervious", "building", "bare",
)  # fmt: skip

# Sentinel-2 top-of-atmosphere reflectance ×10000 per class for B01..B12 (13 bands, B10 cirrus
# near zero); shapes follow textbook spectra: vegetation's red edge, water's NIR absorption.
_S2_SIGNATURE = np.array(
    [
        [1200, 1000, 800, 500, 400, 350, 300, 250, 220, 120, 10, 100, 60],  # water
        [1300, 1000, 900, 600, 1000, 2300, 2900, 3100, 3300, 1000, 15, 1600, 700],  # forest
        [1350, 1100, 1100, 900, 1400, 2500, 2900, 3000, 3200, 1000, 15, 2300, 1300],  # grass
        [1400, 1200, 1300, 1300, 1700, 2100, 2400, 2600, 2700, 900, 20, 2700, 1900],  # crop
        [1700, 1600, 1600, 1700, 1800, 1900, 2000, 2100, 2150, 800, 25, 2500, 2200],  # impervious
        [2000, 1900, 1900, 2000, 2100, 2200, 2300, 2400, 2450, 900, 25, 2800, 2500],  # building
        [1600, 1500, 1700, 2000, 2200, 2400, 2500, 2600, 2700, 1000, 20, 3300, 2800],  # bare
    ],
    dtype=np.float32,
)
# Sentinel-1 σ0 in dB (VV, VH) per class.
_SAR_SIGNATURE = np.array(
    [[-22, -28], [-7, -13], [-10, -17], [-9, -15], [-5, -12], [-1, -7], [-13, -21]],
    dtype=np.float32,
)
# Aerial RGB colour per class.
_RGB_SIGNATURE = np.array(
    [[40, 70, 110], [30, 90, 40], [110, 160, 80], [170, 160, 90], [150, 150, 150],
     [200, 80, 70], [180, 150, 120]],
    dtype=np.float32,
)  # fmt: skip
# Height above terrain in metres per class (trees and buildings stand out in a DSM).
_HEIGHT_ABOVE_GROUND = np.array([0.0, 15.0, 0.3, 0.8, 0.1, 12.0, 0.0], dtype=np.float32)

# Within-class structure (``Landscape.with_structure``): a class's pixels are a mix of its own
# material and a second one, in a spatial pattern: cropland is strips of crop (grassland's
# spectrum) and bare soil, building blocks are roofs between impervious streets, forest is
# crowns with shadowed gaps. Cropland therefore has no spectrum of its own: only the strip
# pattern tells a field from pasture next to bare ground, as in real imagery.
_CROP, _BUILDING, _FOREST = (CLASSES.index(n) for n in ("cropland", "building", "forest"))
_PRIMARY = np.arange(len(CLASSES))
_PRIMARY[_CROP] = CLASSES.index("grassland")
_SECONDARY = np.arange(len(CLASSES))
_SECONDARY[_CROP] = CLASSES.index("bare")
_SECONDARY[_BUILDING] = CLASSES.index("impervious")
_S2_SHADOW = 0.35  # forest gaps: the canopy's reflectance at a third of its brightness
_SAR_SHADOW_DB = -3.0  # and 3 dB less backscatter
# Vegetation classes whose red-edge/NIR (B05..B09, B8A) rise and fall with the season.
_VEGETATION = np.isin(CLASSES, ("forest", "grassland", "cropland"))
_RED_EDGE_NIR = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
# Path radiance ×10000 per band at full haze: strongest in the blue, nearly none in the SWIR.
_HAZE = np.array([900, 750, 600, 450, 380, 320, 280, 240, 220, 150, 0, 60, 30], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit variance: cheap blobs of a chosen size."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale)
    return field / (field.std() + 1e-8)


@dataclass(frozen=True)
class Acquisition:
    """The conditions of one Sentinel acquisition, shared by all pixels of a scene.

    Illumination (sun elevation) scales every S2 band, haze adds path radiance that fades
    towards the SWIR, the season scales vegetation's red edge and NIR, and the radar's
    incidence angle and soil moisture shift σ0 in dB. A pixel's absolute spectrum thus varies
    between scenes for the same cover, so labelled data from a few scenes do not pin classes
    to fixed values, while unlabelled scenes show the whole range.
    """

    gain: float = 1.0
    haze: float = 0.0
    vigour: float = 1.0
    sar_offset_db: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Acquisition:
        return cls(
            gain=float(rng.uniform(0.7, 1.3)),
            haze=float(rng.uniform(0.0, 1.0)),
            vigour=float(rng.uniform(0.6, 1.15)),
            sar_offset_db=float(rng.uniform(-2.5, 2.5)),
        )


@dataclass(frozen=True)
class Landscape:
    """One location: a land-cover class per pixel and a terrain height in metres.

    ``detail`` (optional, from ``with_structure``) is the per-pixel share of the class's
    second material (soil strips in fields, streets between roofs, shadow between crowns).
    """

    classes: np.ndarray  # (H, W) int64 indices into CLASSES
    terrain: np.ndarray  # (H, W) float32 metres above sea level
    detail: np.ndarray | None = None  # (H, W) float32 in [0, 1]

    @classmethod
    def generate(
        cls, rng: np.random.Generator, size: int | tuple[int, int], blob_scale: float = 6.0
    ) -> Landscape:
        shape = (size, size) if isinstance(size, int) else tuple(size)
        # Each location has a few dominant classes, so scene labels vary between locations.
        weights = rng.dirichlet(np.full(len(CLASSES), 0.6)).astype(np.float32)
        scores = np.stack([_smooth_noise(rng, shape, blob_scale) for _ in CLASSES])
        scores += 2.5 * np.log(weights + 1e-3)[:, None, None]
        classes = scores.argmax(axis=0)
        terrain = 300.0 + 40.0 * _smooth_noise(rng, shape, blob_scale * 4)
        return cls(classes=classes, terrain=terrain.astype(np.float32))

    def resized(self, shape: tuple[int, int]) -> Landscape:
        """The same location on another pixel grid (nearest for classes, bilinear for height)."""
        zoom = (shape[0] / self.classes.shape[0], shape[1] / self.classes.shape[1])
        classes = ndimage.zoom(self.classes, zoom, order=0, grid_mode=True, mode="nearest")
        terrain = ndimage.zoom(self.terrain, zoom, order=1, grid_mode=True, mode="nearest")
        detail = None
        if self.detail is not None:
            detail = ndimage.zoom(self.detail, zoom, order=1, grid_mode=True, mode="nearest")
            detail = detail[: shape[0], : shape[1]]
        return Landscape(classes=classes[: shape[0], : shape[1]], terrain=terrain, detail=detail)

    def with_structure(self, rng: np.random.Generator, metres: float = 10.0) -> Landscape:
        """The same cover with within-class patterns at a ``metres`` pixel size (see _PRIMARY).

        Each cropland field (connected region) gets strips 40-80 m wide at its own angle;
        building blocks a grid of ~60 m roofs with 20 m streets; forest a crown texture.
        """
        rows, cols = np.indices(self.classes.shape, dtype=np.float32) * metres
        detail = np.zeros(self.classes.shape, dtype=np.float32)
        fields, count = ndimage.label(self.classes == _CROP)
        if count:
            angle = rng.uniform(0.0, np.pi, size=count + 1)
            width = rng.uniform(40.0, 80.0, size=count + 1)
            phase = rng.uniform(0.0, 2 * np.pi, size=count + 1)
            along = rows * np.cos(angle[fields]) + cols * np.sin(angle[fields])
            strips = np.sin(np.pi * along / width[fields] + phase[fields]) > 0
            detail = np.where(fields > 0, strips.astype(np.float32), detail)
        block, street = 80.0, 20.0
        offset = rng.uniform(0.0, block, size=2)
        streets = ((rows + offset[0]) % block < street) | ((cols + offset[1]) % block < street)
        detail = np.where(self.classes == _BUILDING, streets.astype(np.float32), detail)
        crowns = _smooth_noise(rng, self.classes.shape, max(0.6, 6.0 / metres)) > 0.6
        detail = np.where(self.classes == _FOREST, crowns.astype(np.float32), detail)
        return Landscape(classes=self.classes, terrain=self.terrain, detail=detail)

    def fractions(self) -> np.ndarray:
        """Share of each class in the scene: the basis of scene-level (multi-label) labels."""
        return np.bincount(self.classes.ravel(), minlength=len(CLASSES)) / self.classes.size


def _materials(land: Landscape, signature: np.ndarray, *, radar: bool) -> np.ndarray:
    """Per-pixel signature (H, W, bands) of the class, mixed with its second material."""
    if land.detail is None:
        return signature[land.classes]
    primary = signature[_PRIMARY[land.classes]]
    secondary = signature[_SECONDARY[land.classes]]
    shaded = primary + _SAR_SHADOW_DB if radar else primary * _S2_SHADOW
    secondary = np.where((land.classes == _FOREST)[..., None], shaded, secondary)
    weight = land.detail[..., None]
    return primary * (1.0 - weight) + secondary * weight


def render_s2(
    land: Landscape,
    rng: np.random.Generator,
    *,
    cloud: np.ndarray | None = None,
    acquisition: Acquisition | None = None,
) -> np.ndarray:
    """Sentinel-2 L1C reflectance ×10000 as uint16 (13, H, W); ``cloud`` in [0, 1] whitens."""
    signature = _S2_SIGNATURE
    if acquisition is not None:
        seasonal = np.where(np.outer(_VEGETATION, _RED_EDGE_NIR), acquisition.vigour, 1.0)
        signature = signature * seasonal * acquisition.gain + acquisition.haze * _HAZE
    x = _materials(land, signature.astype(np.float32), radar=False).transpose(2, 0, 1)
    x = x * (1.0 + 0.08 * rng.standard_normal(x.shape[1:], dtype=np.float32))
    x = x + 60.0 * rng.standard_normal(x.shape, dtype=np.float32)
    if cloud is not None:
        x = x * (1.0 - cloud) + (6500.0 + 500.0 * rng.standard_normal(x.shape[1:])) * cloud
    return np.clip(x, 0, 10000).astype(np.uint16)


def render_sar(
    land: Landscape,
    rng: np.random.Generator,
    looks: int = 4,
    *,
    acquisition: Acquisition | None = None,
) -> np.ndarray:
    """Sentinel-1 σ0 in dB as float32 (2, H, W) with multiplicative gamma speckle."""
    signature = _SAR_SIGNATURE + (acquisition.sar_offset_db if acquisition else 0.0)
    db = _materials(land, signature.astype(np.float32), radar=True).transpose(2, 0, 1)
    power = 10.0 ** (db / 10.0) * rng.gamma(looks, 1.0 / looks, size=db.shape)
    return (10.0 * np.log10(power + 1e-6)).astype(np.float32)


def render_rgb(land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """Aerial/satellite RGB as uint8 (3, H, W) with texture and shading from the terrain."""
    x = _RGB_SIGNATURE[land.classes].transpose(2, 0, 1)
    shade = 1.0 + 0.002 * (land.terrain - land.terrain.mean())
    x = x * shade * (1.0 + 0.1 * rng.standard_normal(x.shape[1:], dtype=np.float32))
    return np.clip(x + 6.0 * rng.standard_normal(x.shape, dtype=np.float32), 0, 255).astype(
        np.uint8
    )


def render_dsm(land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """Digital surface model in metres as float32 (1, H, W): terrain plus objects."""
    dsm = land.terrain + _HEIGHT_ABOVE_GROUND[land.classes]
    dsm = dsm + 0.2 * rng.standard_normal(dsm.shape, dtype=np.float32)
    return dsm[None].astype(np.float32)


def cloud_mask(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> np.ndarray:
    """Soft cloud opacity in [0, 1] covering roughly ``cover`` of the scene."""
    field = _smooth_noise(rng, shape, max(shape) / 12)
    threshold = np.quantile(field, 1.0 - cover)
    return np.clip((field - threshold) * 2.0, 0.0, 1.0).astype(np.float32)
