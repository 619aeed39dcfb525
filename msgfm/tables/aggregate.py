"""Finetuning results → the paper's tables, ours beside the published numbers.

Every finetuning job leaves ``finetune/<task>/<init>/<transfer>/frac<fraction>/seed<seed>/
metrics.json``; a table cell is the mean ± standard deviation over the seeds of the matching
jobs, next to the paper's value and the difference. Cells we did not run (the demo skips
some) stay empty rather than being invented. Outputs: one CSV (long form: a line per cell,
for analysis), Markdown (for the report) and LaTeX (for a paper) per table.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from msgfm.errors import DataError
from msgfm.tables.paper import TABLES, Column, Table

RESULT_PATH = re.compile(
    r"(?P<task>[^/]+)/(?P<init>[^/]+)/(?P<transfer>[^/]+)/frac(?P<fraction>[^/]+)/"
    r"seed(?P<seed>\d+)/metrics\.json$"
)


def load_results(paths: Iterable[str | Path], finetune_root: str | Path) -> pd.DataFrame:
    """One row per (job, metric): task, init, transfer, fraction, seed, metric, value."""
    root = Path(finetune_root).resolve()
    records = []
    for path in map(Path, paths):
        relative = path.resolve().relative_to(root).as_posix()
        match = RESULT_PATH.search(relative)
        if match is None:
            raise DataError(path, f"not a finetuning result path ({RESULT_PATH.pattern})")
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(path, f"corrupt metrics JSON: {exc}") from exc
        for metric, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                records.append(
                    {
                        **match.groupdict(),
                        "fraction": float(match["fraction"]),
                        "seed": int(match["seed"]),
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return pd.DataFrame.from_records(
        records, columns=["task", "init", "transfer", "fraction", "seed", "metric", "value"]
    )


def _select(results: pd.DataFrame, column: Column, init: str, transfer: str) -> pd.Series:
    rows = results[
        (results.task == column.task)
        & (results.init == init)
        & (results.transfer == transfer)
        & (results.metric == column.metric)
    ]
    if column.fraction is not None:
        rows = rows[(rows.fraction - column.fraction).abs() < 1e-9]
    elif rows.fraction.nunique() > 1:
        rows = rows[rows.fraction == rows.fraction.max()]  # the full-data run of that task
    return rows.value


def build_table(table: Table, results: pd.DataFrame, transfer: str) -> pd.DataFrame:
    """Long form: one line per (row, column) with ours (mean, std, n) and the paper's value."""
    lines = []
    for row in table.rows:
        for column, paper in zip(table.columns, row.paper, strict=True):
            values = (
                _select(results, column, row.init, transfer) if row.init else pd.Series(dtype=float)
            )
            mean = float(values.mean()) if len(values) else math.nan
            std = (
                float(values.std(ddof=1)) if len(values) > 1 else (0.0 if len(values) else math.nan)
            )
            paper_value = math.nan if paper is None else paper
            lines.append(
                {
                    "table": table.name,
                    "row": row.label,
                    "init": row.init or "",
                    "column": column.label,
                    "metric": column.metric,
                    "ours_mean": mean,
                    "ours_std": std,
                    "seeds": len(values),
                    "paper": paper_value,
                    "difference": mean - paper_value,
                    "higher_is_better": column.higher_is_better,
                }
            )
    return pd.DataFrame(lines)


def _cell(line: pd.Series, decimals: int, latex: bool = False) -> str:
    paper = "–" if math.isnan(line.paper) else f"{line.paper:.{decimals}f}"
    if line.seeds == 0:
        return paper if not line.init else f"– ({paper})"
    pm = r"$\pm$" if latex else "±"
    ours = f"{line.ours_mean:.{decimals}f}"
    if line.seeds > 1:  # a single seed has no spread to show
        ours += f" {pm} {line.ours_std:.{decimals}f}"
    if math.isnan(line.paper):
        return ours
    return f"{ours} ({paper}, {line.difference:+.{decimals}f})"


def to_wide(table: Table, long: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    """Rows × columns of "ours ± std (paper, difference)" strings."""
    decimals = {c.label: c.decimals for c in table.columns}
    wide = {
        row.label: {
            line.column: _cell(line, decimals[line.column], latex)
            for line in long[long.row == row.label].itertuples()
        }
        for row in table.rows
    }
    frame = pd.DataFrame.from_dict(wide, orient="index")[[c.label for c in table.columns]]
    frame.index.name = "run"
    return frame


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(
    paths: Iterable[str | Path],
    finetune_root: str | Path,
    out_dir: str | Path,
    *,
    transfer: str = "stacked",
    tables: Iterable[str] = ("table3", "table5", "table6"),
) -> dict[str, Path]:
    """Write <table>.csv/.md/.tex under ``out_dir``; returns the Markdown paths by table."""
    results = load_results(paths, finetune_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in tables:
        table = TABLES[name]
        long = build_table(table, results, transfer)
        _write(out / f"{name}.csv", long.to_csv(index=False))
        legend = "Cells: ours (mean ± std over seeds) (paper, ours − paper); – = not run.\n\n"
        markdown = f"## {table.title}\n\n{legend}{to_wide(table, long).to_markdown()}\n"
        _write(out / f"{name}.md", markdown)
        latex = to_wide(table, long, latex=True).to_latex(escape=False, caption=table.title)
        _write(out / f"{name}.tex", latex)
        written[name] = out / f"{name}.md"
    return written
