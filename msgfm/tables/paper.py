"""The paper's Tables 3, 5 and 6: their columns, their rows, and the published values.

Our runs are matched to rows by pretraining variant name (config ``variants``), and to
columns by downstream task, BigEarthNet fraction and metric; the published numbers stand
beside ours in every report. Rows whose numbers the paper quotes from the literature
(Table 3's SeCo, SatMAE, ...) are reference rows: printed, never run. Each table also names
the differences the paper draws its conclusions from (:class:`Comparison`), so the report can
say whether ours are distinguishable from seed noise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One table column: which finetuning result and metric it shows."""

    key: str
    task: str
    metric: str
    label: str
    higher_is_better: bool
    decimals: int
    fraction: float | None = None  # BigEarthNet's training fraction; None = the task's only one


@dataclass(frozen=True)
class Row:
    """One table row: a label, the run behind it (None for literature rows), paper values."""

    label: str
    init: str | None
    paper: tuple[float | None, ...]


@dataclass(frozen=True)
class Comparison:
    """A difference the paper concludes from: ``row`` minus ``baseline`` (both row labels)."""

    label: str
    row: str
    baseline: str


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    comparisons: tuple[Comparison, ...]


def _columns(first_fraction: float, second_fraction: float) -> tuple[Column, ...]:
    def ben(fraction: float) -> Column:
        pct = f"{fraction * 100:g}%"
        return Column(f"ben{pct}", "bigearthnet", "mAP_micro", f"{pct} BEN mAP", True, 1, fraction)

    return (
        ben(first_fraction),
        ben(second_fraction),
        Column("cr_mae", "sen12ms_cr", "MAE", "CR MAE", False, 3),
        Column("cr_sam", "sen12ms_cr", "SAM", "CR SAM", False, 2),
        Column("cr_ssim", "sen12ms_cr", "SSIM", "CR SSIM", True, 3),
        Column("sn_psnr", "spacenet2", "PSNR", "SN PSNR", True, 3),
        Column("sn_ssim", "spacenet2", "SSIM", "SN SSIM", True, 3),
        Column("vai_miou", "vaihingen", "mIoU", "Vai mIoU", True, 1),
    )


TABLE6 = Table(
    "table6",
    "Table 6: MoE and cross-sensor reconstruction (100 epochs)",
    _columns(0.01, 0.1),
    (
        Row("MoE ✗ cross ✗ 0%", "t6_dense_self", (78.3, 86.2, 0.038, 8.19, 0.735, 22.333, 0.589, 72.8)),
        Row("MoE ✓ cross ✗ 0%", "t6_moe_self", (78.5, 86.2, 0.026, 5.11, 0.767, 22.528, 0.637, 73.4)),
        Row("MoE ✗ cross ✓ 50%", "t6_dense_cross50", (80.7, 86.9, 0.036, 8.67, 0.753, 22.518, 0.611, 74.6)),
        Row("MoE ✓ cross ✓ 100%", "t6_moe_cross100", (80.5, 86.8, 0.026, 4.96, 0.789, 22.634, 0.649, 74.4)),
        Row("MoE ✓ cross ✓ 50%", "t6_moe_cross50", (80.9, 87.5, 0.026, 5.04, 0.821, 22.742, 0.677, 74.8)),
    ),
    # §4.4: MoE beats dense, cross-sensor beats self-reconstruction (with and without the
    # other), and a 50 % cross rate beats 100 %.
    (
        Comparison("MoE vs dense (self)", "MoE ✓ cross ✗ 0%", "MoE ✗ cross ✗ 0%"),
        Comparison("MoE vs dense (cross 50%)", "MoE ✓ cross ✓ 50%", "MoE ✗ cross ✓ 50%"),
        Comparison("cross vs self (dense)", "MoE ✗ cross ✓ 50%", "MoE ✗ cross ✗ 0%"),
        Comparison("cross vs self (MoE)", "MoE ✓ cross ✓ 50%", "MoE ✓ cross ✗ 0%"),
        Comparison("cross 50% vs 100% (MoE)", "MoE ✓ cross ✓ 50%", "MoE ✓ cross ✓ 100%"),
    ),
)  # fmt: skip

TABLE5 = Table(
    "table5",
    "Table 5: distillation from other pretrained models vs pretraining from scratch (100 epochs)",
    _columns(0.01, 0.1),
    (
        Row("Distilled from ImageNet-22k", "t5_distill_in22k", (79.4, 86.4, 0.035, 6.42, 0.726, 22.107, 0.621, 72.9)),
        Row("Distilled from CLIP", "t5_distill_clip", (76.6, 83.8, 0.051, 8.96, 0.707, 22.559, 0.674, 69.3)),
        Row("Reconstruct CLIP (EVA)", "t5_eva_clip", (73.5, 80.6, 0.053, 9.96, 0.689, 21.778, 0.591, 65.7)),
        Row("From scratch", "t6_moe_cross50", (80.9, 87.2, 0.026, 5.04, 0.821, 22.742, 0.677, 74.8)),
    ),
    # §4.4: each kind of distillation against pretraining from scratch.
    tuple(
        Comparison(f"{label} vs scratch", label, "From scratch")
        for label in ("Distilled from ImageNet-22k", "Distilled from CLIP", "Reconstruct CLIP (EVA)")
    ),
)  # fmt: skip

_ = None
TABLE3 = Table(
    "table3",
    "Table 3: msGFM (800 epochs) against other pretrained models",
    _columns(0.1, 1.0),
    (
        Row("SeCo", None, (82.6, 87.8, _, _, _, _, _, 68.9)),
        Row("SatMAE", None, (82.1, _, _, _, _, 22.742, 0.621, 70.6)),
        Row("MoCoV2", None, (_, 89.3, _, _, _, _, _, _)),
        Row("DINO-MC", None, (84.2, 88.6, _, _, _, _, _, _)),
        Row("GFM", None, (86.3, _, _, _, _, 22.599, 0.638, 75.2)),
        Row("Random", "random", (82.6, 86.2, 0.048, 14.78, 0.572, 21.825, 0.594, 67.0)),
        Row("IN-22k", "in22k", (85.7, 89.5, _, _, _, 21.655, 0.612, 74.7)),
        Row("msGFM", "t3_msgfm", (87.5, 92.9, 0.026, 4.87, 0.842, 22.850, 0.668, 75.8)),
    ),
    # The table's claims: pretraining beats random init on every task, msGFM beats IN-22k.
    (
        Comparison("msGFM vs random", "msGFM", "Random"),
        Comparison("IN-22k vs random", "IN-22k", "Random"),
        Comparison("msGFM vs IN-22k", "msGFM", "IN-22k"),
    ),
)  # fmt: skip

TABLES: dict[str, Table] = {t.name: t for t in (TABLE3, TABLE5, TABLE6)}
