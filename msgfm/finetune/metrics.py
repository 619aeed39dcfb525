"""The paper's downstream metrics (Table 3), with the conventions written down.

- Multi-label classification (BigEarthNet): mAP in percent. ``mAP_micro`` is the SeCo/GFM
  number: scikit-learn's average precision over the whole evaluation set flattened (every
  (image, class) pair is one ranked item). ``mAP_macro`` averages the per-class APs over the
  classes that have at least one positive in the evaluation set; a class without positives has
  no defined AP (scikit-learn warns and returns 0) and is *excluded*, and the count of classes
  used is returned so a small subset cannot silently shift the number.
- Image regression on [0, 1] images (cloud removal, pan-sharpening): MAE over all values; SAM
  in degrees, the mean over all pixels of the angle between predicted and true spectra; SSIM
  as Wang et al. (2004): 11×11 Gaussian window, σ 1.5, K1 0.01, K2 0.03, data range 1, the
  SSIM map over the *valid* region (no padding, as the reference MATLAB code and
  scikit-image), averaged over channels and pixels per image, then over images. torchmetrics'
  SSIM averages a reflect-padded map instead (≈1e-3 different), so it is computed here and
  tested against scikit-image. PSNR with data range 1 is computed *per image* (its MSE over
  channels and pixels) and averaged over images, as image-restoration papers report it; a
  perfect image would be infinite, so the MSE is floored at 1e-10 (100 dB).
- Segmentation (Vaihingen): a confusion matrix over labelled pixels (``ignore_index`` 255 is
  the eroded boundary); IoU per class, mIoU over the 6 classes (GFM) and over the 5 without
  clutter, overall accuracy, all in percent. A class absent from both prediction and labels
  has no IoU and is left out of the means (mmsegmentation's nanmean).

The accumulators keep float64 sums on the device of the first update and can be summed across
DDP processes with ``all_reduce`` before ``compute``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_MIN_MSE = 1e-10
SAM_EPS = 1e-12


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Micro and macro mAP (percent) of (N, K) scores against (N, K) 0/1 targets."""
    from sklearn.metrics import average_precision_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {scores.shape} and targets {targets.shape} must both be (N, classes)"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1 multi-hot labels")
    targets = targets.astype(np.int64)
    if targets.sum() == 0:
        raise ValueError("targets hold no positive label: average precision is undefined")
    micro = average_precision_score(targets, scores, average="micro")
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    per_class = [average_precision_score(targets[:, k], scores[:, k]) for k in present]
    return {
        "mAP_micro": 100.0 * float(micro),
        "mAP_macro": 100.0 * float(np.mean(per_class)),
        "macro_classes": float(len(present)),
    }


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised (size, size) Gaussian, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """(B, C, H, W) → (B,) mean SSIM over channels and the valid region (see module doc)."""
    channels = pred.shape[1]
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {pred.shape}")
    window = gaussian_window().to(pred.device).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)
    p, t = pred.double(), target.double()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / (
        (mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def spectral_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H, W) angle in degrees between the spectra at each pixel.

    Zero vectors have no direction: two zero spectra count as 0° (identical), one zero
    spectrum against a non-zero one as 90° (nothing in common), never NaN.
    """
    p, t = pred.double(), target.double()
    dot = (p * t).sum(dim=1)
    norms = p.norm(dim=1) * t.norm(dim=1)
    cosine = (dot / norms.clamp_min(SAM_EPS)).clamp(-1.0, 1.0)
    angles = torch.rad2deg(torch.arccos(cosine))
    both_zero = (p.norm(dim=1) <= SAM_EPS) & (t.norm(dim=1) <= SAM_EPS)
    return torch.where(both_zero, torch.zeros_like(angles), angles)


def _all_reduce(tensor: torch.Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)


class RegressionMetrics:
    """MAE, SAM (degrees), SSIM and PSNR (dB) of [0, 1] images, accumulated over batches."""

    # sums: |err|, value count, angles, pixel count, SSIM, PSNR, image count
    _FIELDS = ("abs", "values", "angle", "pixels", "ssim", "psnr", "images")

    def __init__(self, data_range: float = 1.0) -> None:
        self.data_range = data_range
        self.sums = torch.zeros(len(self._FIELDS), dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal "
                "(B, C, H, W)"
            )
        self.sums = self.sums.to(pred.device)
        p, t = pred.double(), target.double()
        mse = ((p - t) ** 2).flatten(1).mean(dim=1).clamp_min(PSNR_MIN_MSE)
        psnr = 10.0 * torch.log10(self.data_range**2 / mse)
        angles = spectral_angles(p, t)
        batch = torch.stack(
            [
                (p - t).abs().sum(),
                p.new_tensor(float(p.numel())),
                angles.sum(),
                p.new_tensor(float(angles.numel())),
                ssim_per_image(p, t, self.data_range).sum(),
                psnr.sum(),
                p.new_tensor(float(p.shape[0])),
            ]
        )
        self.sums += batch

    def all_reduce(self) -> None:
        """Sum the accumulators over DDP processes (no-op without a process group)."""
        _all_reduce(self.sums)

    def compute(self) -> dict[str, float]:
        s = dict(zip(self._FIELDS, self.sums.tolist(), strict=True))
        if s["images"] == 0:
            raise ValueError("RegressionMetrics.compute() before any update()")
        return {
            "MAE": s["abs"] / s["values"],
            "SAM": s["angle"] / s["pixels"],
            "SSIM": s["ssim"] / s["images"],
            "PSNR": s["psnr"] / s["images"],
        }


class SegmentationMetrics:
    """Confusion-matrix mIoU / OA for Vaihingen-style labels (see module doc)."""

    def __init__(
        self,
        num_classes: int = 6,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        secondary_exclude: Sequence[int] = (5,),
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names or [str(k) for k in range(num_classes)])
        self.secondary = [k for k in range(num_classes) if k not in set(secondary_exclude)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: (B, K, H, W) logits or (B, H, W) labels; ``target`` (B, H, W) labels."""
        if pred.ndim == 4:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        self.confusion = self.confusion.to(pred.device)
        target = target.long()
        keep = target != self.ignore_index
        truth, guess = target[keep], pred.long()[keep]
        if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ValueError(
                f"labels outside 0..{self.num_classes - 1} (and not {self.ignore_index})"
            )
        index = truth * self.num_classes + guess
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def all_reduce(self) -> None:
        """Sum the confusion matrices over DDP processes (no-op without a process group)."""
        _all_reduce(self.confusion)

    def compute(self) -> dict[str, float]:
        """Rows are true classes, columns predictions; values in percent."""
        conf = self.confusion.double().cpu()
        total = conf.sum().item()
        if total == 0:
            raise ValueError("SegmentationMetrics.compute() before any labelled pixel")
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
        result = {
            "mIoU": 100.0 * float(iou.nanmean()),
            "mIoU5": 100.0 * float(iou[self.secondary].nanmean()),
            "OA": 100.0 * tp.sum().item() / total,
        }
        for name, value in zip(self.class_names, iou.tolist(), strict=True):
            result[f"IoU_{name}"] = 100.0 * value
        return result
