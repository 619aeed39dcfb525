"""A table as a figure: for every column, each row's seeds and mean ± std beside the paper.

The Markdown tables say how far each cell is from the paper; the figure shows it, and shows
the seed spread the numbers hide (a 2-point gap inside a 3-point spread is not a finding).
One panel per column, the table's rows on the x axis: our seeds as small dots, their mean
with a ±1 std bar, the paper's value as an open diamond; rows we do not run (literature rows
of Table 3) show the diamond alone. The arrow in each panel's title is the metric's direction.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from msgfm.files import atomic_path
from msgfm.tables.paper import Table

OURS, PAPER = "tab:blue", "black"


def plot_table(table: Table, long: pd.DataFrame, seeds: pd.DataFrame, path: Path) -> Path:
    """Write the figure of one table.

    ``long`` is :func:`msgfm.tables.aggregate.build_table`'s frame (ours' mean and std, the
    paper's value per row and column), ``seeds`` one line per (row, column, seed) value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row.label for row in table.rows]
    columns = len(table.columns)
    width = min(4, columns)
    height = math.ceil(columns / width)
    fig, axes = plt.subplots(
        height, width, figsize=(3.2 * width, 2.2 + 0.12 * len(labels) * height), squeeze=False
    )
    for ax, column in zip(axes.flat, table.columns, strict=False):
        cells = long[long.column == column.label].set_index("row").reindex(labels)
        positions = range(len(labels))
        ax.scatter(positions, cells.paper, marker="D", facecolors="none", edgecolors=PAPER,
                   label="paper", zorder=3)  # fmt: skip
        ax.errorbar(positions, cells.ours_mean, yerr=cells.ours_std, fmt="o", color=OURS,
                    capsize=3, label="ours (mean ± std)", zorder=2)  # fmt: skip
        spread = seeds[seeds.column == column.label]
        ax.scatter([labels.index(r) for r in spread.row], spread.value, s=8, color=OURS,
                   alpha=0.5, label="ours (each seed)", zorder=1)  # fmt: skip
        arrow = "↑" if column.higher_is_better else "↓"
        ax.set_title(f"{column.label} {arrow}", fontsize=9)
        ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[columns:]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", fontsize=8)
    fig.suptitle(table.title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
