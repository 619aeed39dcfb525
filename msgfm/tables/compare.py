"""Is a difference between two rows real, or seed noise? A paired test over seeds.

The paper reads its ablations (Tables 5 and 6) and its comparison with random init (Table 3)
from single differences; ours come from a few seeds each, and a mean ahead by less than the
seeds' spread is a tie, not a win. Two cells of one column are paired by (fraction, seed):
the same seed draws the same training subset (:mod:`msgfm.finetune.subsets`) and the same
data order and flips (:mod:`msgfm.finetune.data`) for either encoder, so the seed-to-seed
variation they share cancels in the per-seed difference. The test is the paired t-test
(scipy's ``ttest_rel``, two-sided): with three seeds a sign or permutation test cannot go
below p = 0.25, so it could never call anything real. Each verdict is read in the metric's
own direction (lower is better for MAE and SAM). No correction for the many cells tested:
at ``ALPHA`` one cell in twenty differs by chance alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

ALPHA = 0.05  # two-sided significance level of a verdict
COMPARISON_LEGEND = (
    "Paired differences: row − baseline, mean over the seeds both rows ran (paired by seed: the "
    "same training subset and data order). Better or worse in the metric's direction (lower "
    f"is better for MAE and SAM) when a two-sided paired t-test over the seeds gives p < {ALPHA}, "
    "otherwise tie; a single common seed gets no test; – = no seed that both rows ran. Not "
    "corrected for the number of cells tested.\n\n"
)


@dataclass(frozen=True)
class PairedDifference:
    """One column's difference between two rows over their common seeds."""

    difference: float  # mean of row − baseline, in the metric's units; NaN without a pair
    p_value: float  # two-sided paired t-test; NaN below two seeds or for identical values
    seeds: int  # the (fraction, seed) pairs both rows ran
    verdict: str  # "better", "worse", "tie", "no test" (one seed), "not run"


def paired_difference(
    row: pd.Series, baseline: pd.Series, higher_is_better: bool
) -> PairedDifference:
    """Compare two cells given as values indexed by (fraction, seed); unmatched seeds drop."""
    pairs = pd.concat({"row": row, "baseline": baseline}, axis=1, join="inner")
    if pairs.empty:
        return PairedDifference(math.nan, math.nan, 0, "not run")
    difference = float((pairs.row - pairs.baseline).mean())
    if len(pairs) == 1:
        return PairedDifference(difference, math.nan, 1, "no test")
    p_value = float(stats.ttest_rel(pairs.row, pairs.baseline).pvalue)
    if not p_value < ALPHA:  # NaN when every pair is equal: a tie too
        verdict = "tie"
    else:
        verdict = "better" if (difference > 0) == higher_is_better else "worse"
    return PairedDifference(difference, p_value, len(pairs), verdict)


def marker(paired: PairedDifference, decimals: int) -> str:
    """The Markdown cell: "+7.2 better (p=0.03, 3 seeds)", "tie: +0.4 (p=0.61, 3 seeds)"."""
    if paired.seeds == 0:
        return "–"
    delta = f"{paired.difference:+.{decimals}f}"
    if paired.seeds == 1:
        return f"{delta} (1 seed: no test)"
    if math.isnan(paired.p_value):
        p = "identical"
    else:
        p = "p<0.001" if paired.p_value < 0.001 else f"p={paired.p_value:.2g}"
    detail = f"({p}, {paired.seeds} seeds)"
    if paired.verdict == "tie":
        return f"tie: {delta} {detail}"
    return f"{delta} {paired.verdict} {detail}"
