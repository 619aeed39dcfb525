"""Downstream metrics against independent reference computations on fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from msgfm.finetune.metrics import (
    RegressionMetrics,
    SegmentationMetrics,
    multilabel_map,
    spectral_angles,
)


def reference_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP as the mean of the precision at each positive's rank (no ties in the scores)."""
    order = np.argsort(-scores)
    hits = labels[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / hits.sum())


def test_multilabel_map_matches_rank_formula() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((40, 5))
    targets = (rng.random((40, 5)) < 0.3).astype(np.int64)
    targets[:, 4] = 0  # a class without positives: excluded from the macro mean
    result = multilabel_map(scores, targets)
    micro = reference_ap(scores.ravel(), targets.ravel())
    macro = np.mean([reference_ap(scores[:, k], targets[:, k]) for k in range(4)])
    assert result["mAP_micro"] == pytest.approx(100 * micro, abs=1e-6)
    assert result["mAP_macro"] == pytest.approx(100 * macro, abs=1e-6)
    assert result["macro_classes"] == 4


def test_multilabel_map_perfect_ranking_and_errors() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert multilabel_map(targets + 0.1, targets)["mAP_micro"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="0/1"):
        multilabel_map(np.zeros((2, 2)), np.full((2, 2), 2))
    with pytest.raises(ValueError, match="no positive"):
        multilabel_map(np.zeros((2, 2)), np.zeros((2, 2)))


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    target = rng.random((3, 4, 24, 20))
    pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
    return torch.from_numpy(pred), torch.from_numpy(target)


def test_regression_metrics_match_numpy_and_skimage() -> None:
    batches = [_images(1), _images(2)]
    metrics = RegressionMetrics()
    for pred, target in batches:
        metrics.update(pred.float(), target.float())
    result = metrics.compute()

    p = np.concatenate([b[0].float().double().numpy() for b in batches])
    t = np.concatenate([b[1].float().double().numpy() for b in batches])
    mae = np.abs(p - t).mean()
    cos = (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))
    sam = np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()
    psnr = np.mean(
        [10 * math.log10(1 / ((pi - ti) ** 2).mean()) for pi, ti in zip(p, t, strict=True)]
    )
    ssim = np.mean(
        [
            structural_similarity(
                pi, ti, channel_axis=0, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, data_range=1.0,
            )
            for pi, ti in zip(p, t, strict=True)
        ]
    )  # fmt: skip
    assert result["MAE"] == pytest.approx(mae, abs=1e-6)
    assert result["SAM"] == pytest.approx(sam, abs=1e-6)
    assert result["PSNR"] == pytest.approx(psnr, abs=1e-6)
    assert result["SSIM"] == pytest.approx(ssim, abs=1e-6)


def test_regression_metrics_edge_cases() -> None:
    image = torch.rand(2, 3, 16, 16)
    metrics = RegressionMetrics()
    metrics.update(image, image)
    result = metrics.compute()
    assert result["MAE"] == 0 and result["SSIM"] == pytest.approx(1.0)
    assert result["PSNR"] == pytest.approx(100.0)  # MSE floored at 1e-10
    assert result["SAM"] == pytest.approx(0.0, abs=1e-5)
    zero, one = torch.zeros(1, 3, 1, 2), torch.ones(1, 3, 1, 2)
    mixed = torch.cat([zero[..., :1], one[..., 1:]], dim=-1)
    assert spectral_angles(zero, zero).tolist() == [[[0.0, 0.0]]]
    assert spectral_angles(zero, one).tolist() == [[[90.0, 90.0]]]
    assert spectral_angles(mixed, one).tolist() == [[[90.0, 0.0]]]
    with pytest.raises(ValueError, match="before any update"):
        RegressionMetrics().compute()


def test_segmentation_metrics_match_confusion_formula() -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 6, size=(2, 30, 30))
    target[0, :3] = 255
    logits = rng.standard_normal((2, 6, 30, 30))
    pred = logits.argmax(1)
    pred[target == 1] = 1  # make one class easy so the IoUs differ
    metrics = SegmentationMetrics(class_names=[f"c{k}" for k in range(6)])
    metrics.update(torch.from_numpy(pred[:1]), torch.from_numpy(target[:1]))
    metrics.update(torch.from_numpy(pred[1:]), torch.from_numpy(target[1:]))
    result = metrics.compute()

    keep = target != 255
    truth, guess = target[keep], pred[keep]
    iou = [
        ((truth == k) & (guess == k)).sum() / ((truth == k) | (guess == k)).sum() for k in range(6)
    ]
    assert result["mIoU"] == pytest.approx(100 * np.mean(iou), abs=1e-6)
    assert result["mIoU5"] == pytest.approx(100 * np.mean(iou[:5]), abs=1e-6)
    assert result["OA"] == pytest.approx(100 * (truth == guess).mean(), abs=1e-6)
    assert result["IoU_c1"] == pytest.approx(100 * iou[1], abs=1e-6)


def test_segmentation_absent_class_is_left_out_and_logits_accepted() -> None:
    target = torch.tensor([[[0, 0], [1, 255]]])
    logits = torch.zeros(1, 6, 2, 2)
    logits[0, 0] = 1.0  # predicts class 0 everywhere
    metrics = SegmentationMetrics()
    metrics.update(logits, target)
    result = metrics.compute()
    # class 0: tp 2, union 3; class 1: tp 0, union 1; classes 2-5 absent → not averaged
    assert result["mIoU"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert math.isnan(result["IoU_5"])
    with pytest.raises(ValueError, match="labels outside"):
        metrics.update(torch.zeros(1, 1, 1, dtype=torch.long), torch.full((1, 1, 1), 7))
