"""Reconstruction figures in the style of the paper's Fig. 3.

One row per example: the input, the input as the encoder saw it (masked patches greyed out),
the reconstruction and the target. For a cross-sensor example the target is the partner
sensor's image (e.g. DSM in, RGB out), which is the point of msGFM's pretraining and what a
reader of the figure should check first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msgfm.data.sensors import RGB_MEAN, RGB_STD, S2_BANDS
from msgfm.files import atomic_path


@dataclass
class ReconstructionExample:
    """Normalised (C, H, W) arrays of one sample; ``mask`` is (H, W) with 1 = masked."""

    sensor: str
    target_sensor: str
    image: np.ndarray
    mask: np.ndarray
    reconstruction: np.ndarray
    target: np.ndarray


def to_display(sensor: str, image: np.ndarray) -> np.ndarray:
    """A normalised sensor image as an (H, W, 3) float array in [0, 1] for plotting."""
    if sensor == "rgb":
        rgb = image[:3].transpose(1, 2, 0) * RGB_STD + RGB_MEAN
    elif sensor == "s2":
        # True colour from B04, B03, B02, brightened: reflectance rarely exceeds 0.3.
        idx = [S2_BANDS.index(b) for b in ("B04", "B03", "B02")]
        rgb = image[idx].transpose(1, 2, 0) * 3.5
    elif sensor == "sar":
        vv = image[0]
        rgb = np.repeat(vv[:, :, None], 3, axis=2)
    elif sensor == "dsm":
        z = image[0]
        z = (z - z.min()) / (np.ptp(z) + 1e-6)
        rgb = np.stack([z, z * 0.8 + 0.1, 1.0 - z], axis=2)
    else:
        raise KeyError(f"no display rule for sensor {sensor!r}")
    return np.clip(rgb, 0.0, 1.0)


def save_reconstruction_figure(
    examples: Sequence[ReconstructionExample], path: str | Path, title: str = ""
) -> Path:
    """Write a PNG grid: one row per example, columns input / masked / reconstruction / target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = len(examples)
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        shown = to_display(ex.sensor, ex.image)
        masked = shown.copy()
        masked[ex.mask.astype(bool)] = 0.5
        panels = (
            (shown, f"input ({ex.sensor})"),
            (masked, "masked"),
            (
                to_display(ex.target_sensor, ex.reconstruction),
                f"reconstruction ({ex.target_sensor})",
            ),
            (to_display(ex.target_sensor, ex.target), f"target ({ex.target_sensor})"),
        )
        for ax, (img, label) in zip(row, panels, strict=True):
            ax.imshow(img)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
