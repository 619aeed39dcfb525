"""The demo scenes need spatial context and vary between acquisitions (msgfm.data.demo.landscape).

Pretraining can only beat random init on the demo if the unlabelled scenes teach something the
few labelled patches cannot: here, that a field is *strips* of crop and soil (no pixel of it has
a spectrum of its own) and that the same cover looks different under another sun, haze and
season.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msgfm.data.demo import bigearthnet as demo_ben
from msgfm.data.demo.landscape import (
    _S2_SIGNATURE,
    CLASSES,
    Acquisition,
    Landscape,
    _materials,
    render_s2,
)

CROP, GRASS, BARE = (CLASSES.index(n) for n in ("cropland", "grassland", "bare"))


def _structured(seed: int) -> Landscape:
    rng = np.random.default_rng(seed)
    return Landscape.generate(
        rng, demo_ben.PATCH_PIXELS, blob_scale=demo_ben.BLOB_SCALE
    ).with_structure(rng)


def _scene_with_cropland() -> Landscape:
    for seed in range(200):
        land = _structured(seed)
        if (land.classes == CROP).mean() > 0.2:
            return land
    raise AssertionError("no demo scene with 20 % cropland in 200 draws")


def test_cropland_pixels_have_no_spectrum_of_their_own() -> None:
    land = _scene_with_cropland()
    spectra = _materials(land, _S2_SIGNATURE, radar=False)[land.classes == CROP]
    is_grass = np.all(np.isclose(spectra, _S2_SIGNATURE[GRASS]), axis=1)
    is_bare = np.all(np.isclose(spectra, _S2_SIGNATURE[BARE]), axis=1)
    assert np.all(is_grass | is_bare), "a per-pixel classifier must not be able to see cropland"
    assert 0.3 < is_bare.mean() < 0.7, "fields are strips of crop and soil in about equal parts"


def test_fields_are_strips_that_only_spatial_context_reveals() -> None:
    land = _scene_with_cropland()
    # Soil inside fields comes in long runs along one direction (strips), while the soil share
    # of a field matches a random mix: the pattern, not the pixel counts, marks a field.
    fields, count = ndimage.label(land.classes == CROP)
    largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(fields), fields, range(1, count + 1))))
    soil = (land.detail > 0.5) & (fields == largest)
    pieces, n_pieces = ndimage.label(soil)
    sizes = ndimage.sum(np.ones_like(pieces), pieces, range(1, n_pieces + 1))
    rng = np.random.default_rng(0)
    scattered = (rng.random(soil.shape) < soil.sum() / (fields == largest).sum()) & (
        fields == largest
    )
    _, n_scattered = ndimage.label(scattered)
    assert n_pieces < n_scattered / 10, "strips are few connected pieces, not scattered pixels"
    assert sizes.max() >= 60


def test_acquisitions_change_the_spectrum_of_the_same_cover() -> None:
    land = _structured(1)
    rng = np.random.default_rng(2)
    plain = render_s2(land, rng, acquisition=Acquisition()).astype(float).mean(axis=(1, 2))
    hazy = render_s2(land, rng, acquisition=Acquisition(haze=1.0)).astype(float).mean(axis=(1, 2))
    bright = render_s2(land, rng, acquisition=Acquisition(gain=1.2)).astype(float).mean(axis=(1, 2))
    b02, b12 = 1, 12
    assert abs(hazy[b02] - plain[b02] - 750) < 40, "haze adds path radiance in the blue"
    assert abs(hazy[b12] - plain[b12]) < 40, "and almost none in the SWIR"
    assert abs(bright[b12] / plain[b12] - 1.2) < 0.02, "the sun scales every band"
    assert np.allclose(
        plain, render_s2(land, rng).astype(float).mean(axis=(1, 2)), rtol=0.01, atol=5
    )
