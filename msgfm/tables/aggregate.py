"""Finetuning results → the paper's tables, ours beside the published numbers.

Every finetuning job leaves ``finetune/<task>/<init>/<transfer>/frac<fraction>/seed<seed>/
metrics.json``; a table cell is the mean ± standard deviation over the seeds of the matching
jobs, next to the paper's value and the difference. Cells we did not run (the demo skips
some) stay empty rather than being invented. Outputs: one CSV (long form: a line per cell,
for analysis), Markdown (for the report) and LaTeX (for a paper) per table.

Below each Markdown table, the differences the paper concludes from (its ``comparisons``:
pretrained vs random, MoE vs dense, cross vs self, distilled vs from scratch), each tested
against seed noise by a paired test over seeds (:mod:`msgfm.tables.compare`); their numbers
go to ``<table>_paired.csv``.

Each table also says what it cost, read from the jobs' own ``metrics.json`` (``device_hours``:
GPU-hours on a cluster, process-hours on a CPU, summed over a job's resumptions) rather than
from MLflow, so it needs no store: per row the device-hours of its finetuning jobs (over seeds
and tasks, each job once) and, separately, of the pretraining run of its encoder; a total line
below. With a tracking URI the tables are also logged to MLflow (:func:`log_tables`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from msgfm.errors import DataError
from msgfm.files import write_text_atomic
from msgfm.tables.compare import COMPARISON_LEGEND, PairedDifference, marker, paired_difference
from msgfm.tables.paper import TABLES, Column, Row, Table
from msgfm.tables.plots import plot_table

RESULT_PATH = re.compile(
    r"(?P<task>[^/]+)/(?P<init>[^/]+)/(?P<transfer>[^/]+)/frac(?P<fraction>[^/]+)/"
    r"seed(?P<seed>\d+)/metrics\.json$"
)
TOTAL = "Total"  # the label of the cost total line


def load_results(paths: Iterable[str | Path], finetune_root: str | Path) -> pd.DataFrame:
    """One row per (job, metric): job folder, task, init, transfer, fraction, seed, metric,
    value."""
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
                        "job": str(path.parent),
                        **match.groupdict(),
                        "fraction": float(match["fraction"]),
                        "seed": int(match["seed"]),
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return pd.DataFrame.from_records(
        records,
        columns=["job", "task", "init", "transfer", "fraction", "seed", "metric", "value"],
    )


def _select(results: pd.DataFrame, column: Column, init: str, transfer: str) -> pd.DataFrame:
    """The jobs' lines that fill one cell (one per seed)."""
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
    return rows


def seed_values(table: Table, results: pd.DataFrame, transfer: str) -> pd.DataFrame:
    """One line per (row, column, seed): the values behind each cell's mean (the figure's)."""
    parts = [
        _select(results, column, row.init, transfer).assign(row=row.label, column=column.label)
        for row in table.rows
        if row.init
        for column in table.columns
    ]
    columns = ["row", "column", "seed", "value"]
    return pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)


def build_comparisons(table: Table, results: pd.DataFrame, transfer: str) -> pd.DataFrame:
    """One line per (comparison, column): the two rows' cells paired by (fraction, seed)."""
    inits = {row.label: row.init for row in table.rows}

    def cell(label: str, column: Column) -> pd.Series:
        selected = _select(results, column, inits[label], transfer)
        return selected.set_index(["fraction", "seed"]).value

    lines = [
        {
            "table": table.name, "comparison": comparison.label, "row": comparison.row,
            "baseline": comparison.baseline, "column": column.label, "metric": column.metric,
            "higher_is_better": column.higher_is_better,
            **asdict(paired_difference(
                cell(comparison.row, column), cell(comparison.baseline, column),
                column.higher_is_better,
            )),
        }
        for comparison in table.comparisons
        for column in table.columns
    ]  # fmt: skip
    return pd.DataFrame(lines)


def comparisons_wide(table: Table, paired: pd.DataFrame) -> pd.DataFrame:
    """Comparisons × columns of markers ("+7.2 better (p=0.03, 3 seeds)", "tie: ...")."""
    decimals = {c.label: c.decimals for c in table.columns}
    wide = {
        comparison.label: {
            line.column: marker(
                PairedDifference(line.difference, line.p_value, line.seeds, line.verdict),
                decimals[line.column],
            )
            for line in paired[paired.comparison == comparison.label].itertuples()
        }
        for comparison in table.comparisons
    }
    frame = pd.DataFrame.from_dict(wide, orient="index")[[c.label for c in table.columns]]
    frame.index.name = "row − baseline"
    return frame


def _device_hours(results: pd.DataFrame, jobs: Iterable[str]) -> float:
    """Summed device-hours of ``jobs`` (NaN when none of them logged any)."""
    hours = results[results.metric == "device_hours"].set_index("job").value
    return float(hours.reindex(sorted(set(jobs))).sum(min_count=1))


def row_jobs(table: Table, row: Row, results: pd.DataFrame, transfer: str) -> set[str]:
    """The finetuning jobs (folders) behind a row's cells; a job filling several columns (the
    three cloud-removal metrics) is one job."""
    if not row.init:
        return set()
    return {
        job for column in table.columns for job in _select(results, column, row.init, transfer).job
    }


def pretrain_hours(pretrain_root: str | Path | None, inits: Iterable[str]) -> dict[str, float]:
    """Device-hours of each init's pretraining job, from its ``metrics.json``; inits without
    one (random, a downloaded ImageNet-22k model, not run yet) are left out."""
    hours: dict[str, float] = {}
    for init in inits if pretrain_root else ():
        path = Path(pretrain_root) / init / "metrics.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("device_hours")
            except json.JSONDecodeError as exc:
                raise DataError(path, f"corrupt metrics JSON: {exc}") from exc
            if isinstance(value, int | float):
                hours[init] = float(value)
    return hours


def table_cost(
    table: Table, results: pd.DataFrame, transfer: str, pretrained: Mapping[str, float]
) -> pd.DataFrame:
    """Device-hours per row (finetuning jobs, each once; pretraining of its encoder) and a
    "Total" line (each job and each pretraining run once within this table)."""
    lines, all_jobs, variants = {}, set(), set()
    for row in table.rows:
        jobs = row_jobs(table, row, results, transfer)
        all_jobs |= jobs
        if row.init in pretrained:
            variants.add(row.init)
        lines[row.label] = {
            "finetune_device_hours": _device_hours(results, jobs),
            "pretrain_device_hours": pretrained.get(row.init or "", math.nan),
        }
    lines[TOTAL] = {
        "finetune_device_hours": _device_hours(results, all_jobs),
        "pretrain_device_hours": sum(pretrained[v] for v in variants) if variants else math.nan,
    }
    return pd.DataFrame.from_dict(lines, orient="index")


def build_table(
    table: Table,
    results: pd.DataFrame,
    transfer: str,
    pretrained: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Long form: one line per (row, column) with ours (mean, std, n), the paper's value and
    the cost (the cell's jobs summed over seeds; the row's pretraining), then a total line."""
    pretrained = pretrained or {}
    lines = []
    for row in table.rows:
        for column, paper in zip(table.columns, row.paper, strict=True):
            selected = (
                _select(results, column, row.init, transfer) if row.init else results.iloc[:0]
            )
            values = selected.value
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
                    "finetune_device_hours": _device_hours(results, selected.job),
                    "pretrain_device_hours": pretrained.get(row.init or "", math.nan),
                }
            )
    total = table_cost(table, results, transfer, pretrained).loc[TOTAL]
    lines.append(
        {
            "table": table.name, "row": TOTAL, "init": "", "column": "cost",
            "metric": "device_hours", "ours_mean": math.nan, "ours_std": math.nan,
            "seeds": 0, "paper": math.nan, "difference": math.nan,
            "higher_is_better": False,
            "finetune_device_hours": total.finetune_device_hours,
            "pretrain_device_hours": total.pretrain_device_hours,
        }
    )  # fmt: skip
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


TABLE_FILES = (".csv", "_paired.csv", ".md", ".tex", ".png")  # write_tables' files per table
COST_COLUMNS = {
    "finetune_device_hours": "finetune device-h",
    "pretrain_device_hours": "pretrain device-h",
}
LEGEND = (
    "Cells: ours (mean ± std over seeds) (paper, ours − paper); – = not run. "
    "Cost in device-hours (GPU-hours on a cluster, process-hours on a CPU): a row's finetuning "
    "jobs summed over seeds and tasks, and apart from them the pretraining of its encoder "
    "(– = none of ours: random init, a downloaded model, or not run); the total counts each job "
    "and each pretraining once, including those this table shares with another.\n\n"
)


def _hours(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def to_wide(
    table: Table, long: pd.DataFrame, cost: pd.DataFrame, latex: bool = False
) -> pd.DataFrame:
    """Rows × columns of "ours ± std (paper, difference)" strings, the rows' cost columns and
    a total line."""
    decimals = {c.label: c.decimals for c in table.columns}
    wide = {
        row.label: {
            line.column: _cell(line, decimals[line.column], latex)
            for line in long[long.row == row.label].itertuples()
        }
        for row in table.rows
    }
    frame = pd.DataFrame.from_dict(wide, orient="index")[[c.label for c in table.columns]]
    frame.loc[TOTAL] = ""
    for key, label in COST_COLUMNS.items():
        frame[label] = [_hours(cost.loc[name, key]) for name in frame.index]
    frame.index.name = "run"
    return frame


def write_tables(
    paths: Iterable[str | Path],
    finetune_root: str | Path,
    out_dir: str | Path,
    *,
    transfer: str = "stacked",
    tables: Iterable[str] = tuple(TABLES),
    pretrain_root: str | Path | None = None,
    tracking: tuple[str, str | Path] | None = None,
) -> dict[str, Path]:
    """Write <table>.csv/.md/.tex/.png (TABLE_FILES) under ``out_dir``; returns the Markdown
    paths by table.

    ``pretrain_root`` (the pretraining jobs' folders) adds the encoders' cost; ``tracking``
    (tracking URI, results root) also logs every table to MLflow (:func:`log_tables`).
    """
    results = load_results(paths, finetune_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inits = {row.init for name in tables for row in TABLES[name].rows if row.init}
    pretrained = pretrain_hours(pretrain_root, sorted(inits))
    members = (  # every table's, for the runs' "tables" tag
        {t: row_members(TABLES[t], results, transfer, pretrain_root) for t in TABLES}
        if tracking
        else {}
    )
    written: dict[str, Path] = {}
    for name in tables:
        table = TABLES[name]
        long = build_table(table, results, transfer, pretrained)
        cost = table_cost(table, results, transfer, pretrained)
        write_text_atomic(out / f"{name}.csv", long.to_csv(index=False))
        paired = build_comparisons(table, results, transfer)
        write_text_atomic(out / f"{name}_paired.csv", paired.to_csv(index=False))
        wide = to_wide(table, long, cost).to_markdown(disable_numparse=True)
        differences = comparisons_wide(table, paired).to_markdown(disable_numparse=True)
        markdown = (
            f"## {table.title}\n\n{LEGEND}{wide}\n\n"
            f"### Paired differences over seeds\n\n{COMPARISON_LEGEND}{differences}\n"
        )
        write_text_atomic(out / f"{name}.md", markdown)
        latex = to_wide(table, long, cost, latex=True).to_latex(escape=False, caption=table.title)
        write_text_atomic(out / f"{name}.tex", latex)
        plot_table(table, long, seed_values(table, results, transfer), out / f"{name}.png")
        written[name] = out / f"{name}.md"
        if tracking:
            log_tables(tracking, table, out, members, cost.loc[TOTAL], long, pretrain_root)
    return written


def row_members(
    table: Table, results: pd.DataFrame, transfer: str, pretrain_root: str | Path | None
) -> dict[str, str]:
    """Job folder -> row label, for every finetuning and pretraining job behind the table."""
    members: dict[str, str] = {}
    for row in table.rows:
        jobs = row_jobs(table, row, results, transfer)
        if pretrain_root and row.init:
            jobs.add(str(Path(pretrain_root) / row.init))
        members.update(dict.fromkeys(jobs, row.label))
    return members


def metric_name(column: Column) -> str:
    """A table column as an MLflow metric name: ``<task>[_<pct>pct]/<metric>``, e.g.
    ``bigearthnet_10pct/mAP_micro`` (MLflow refuses the "%" of the column labels)."""
    fraction = f"_{column.fraction * 100:g}pct" if column.fraction is not None else ""
    return f"{column.task}{fraction}/{column.metric}"


def downstream_metrics(
    table: Table, long: pd.DataFrame, pretrain_root: str | Path | None
) -> dict[str, dict[str, float]]:
    """Pretraining job folder -> the mean and seed count of each cell its row filled."""
    if pretrain_root is None:
        return {}
    columns = {column.label: column for column in table.columns}
    out: dict[str, dict[str, float]] = {}
    for line in long[(long.seeds > 0) & (long.init != "")].itertuples():
        name = metric_name(columns[line.column])
        metrics = out.setdefault(str(Path(pretrain_root) / line.init), {})
        metrics[name] = float(line.ours_mean)
        metrics[f"{name}/seeds"] = float(line.seeds)
    return out


def log_tables(
    tracking: tuple[str, str | Path],
    table: Table,
    out: Path,
    members: Mapping[str, Mapping[str, str]],
    total: pd.Series,
    long: pd.DataFrame,
    pretrain_root: str | Path | None,
) -> None:
    """Log one table to MLflow and tag the runs behind its rows.

    The table's files and cost totals go to a ``tables`` run in the table's experiment. The
    finetuning and pretraining runs behind each row (``members``: table name -> job folder ->
    row label) get ``<table>_row``, the row's label, which lines the runs of an ablation row
    up in the UI's compare view, and ``tables``, every table they feed (a run such as Table 6's
    best row, also Table 5's "from scratch", feeds several). Each row's pretraining run also
    receives the row's cells as metrics (:func:`downstream_metrics`), so the compare view of
    the table's experiment sets variant parameters against downstream results. Table 3's
    pretraining run also
    gets the registry's ``table3`` alias on its encoder version (:mod:`msgfm.model_registry`).
    """
    from msgfm.tracking import log_table_run, read_run_id, tag_job_runs

    uri, results_root = tracking
    tags_by_job = {
        job: {
            f"{table.name}_row": label,
            "tables": ",".join(sorted(name for name, jobs in members.items() if job in jobs)),
        }
        for job, label in members[table.name].items()
        if read_run_id(job)
    }
    tag_job_runs(uri, tags_by_job, downstream_metrics(table, long, pretrain_root))
    if table.name == "table3":  # the registry's alias follows the encoder behind the table
        from msgfm.tracking import alias_table3_encoder

        alias_table3_encoder(uri, {read_run_id(job) for job in members[table.name]} - {None})
    log_table_run(
        uri,
        results_root,
        table.name,
        [out / f"{table.name}{suffix}" for suffix in TABLE_FILES],
        {f"cost/{key}": float(total[key]) for key in COST_COLUMNS},
    )
