"""Paper Fig. 4 (§4.3): single-sensor vs multi-sensor pretraining, from finetuning results.

The paper's figure crosses the pretraining data (rows: SAR only, S2 only, the multi-sensor
msGFM) with the sensors the downstream task is fed (columns: SAR, S2, both) in two panels:
10 % BigEarthNet, mAP (higher is better), and 1 % SEN12MS-CR cloud removal, SAM in degrees
(lower is better), mean and standard deviation over three replicates. Its two claims are read
along both axes: with the inputs fixed, the multi-sensor row wins; with the pretraining fixed,
both inputs win. We draw each panel as grouped bars (a group per input, a bar per pretraining,
error bars ± std over seeds) so both comparisons stand side by side, and write the numbers as
a long-form CSV.

The paper prints its values only inside the figure image; its text quotes one: msGFM fed S2
alone on BigEarthNet reaches 86.8 mAP. That value is drawn across our bar (dashed) and sits in
the CSV's ``paper`` column; the others stay empty rather than being read off a picture.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from msgfm.errors import DataError
from msgfm.files import atomic_path, write_text_atomic

MULTI_SENSOR = "msGFM"  # the row label of the multi-sensor model (fig4_rows in rules/common.smk)


@dataclass(frozen=True)
class Panel:
    """One panel of the figure: a task at one training fraction, and the metric shown."""

    task: str
    fraction: float
    metric: str
    title: str
    higher_is_better: bool


PANELS = (
    Panel("bigearthnet", 0.1, "mAP_micro", "BigEarthNet 10 %: mAP (↑)", True),
    Panel("sen12ms_cr", 0.01, "SAM", "SEN12MS-CR 1 %: SAM in degrees (↓)", False),
)
# (task, pretraining row label, sensors label) -> the paper's value (§4.3 text).
PAPER = {("bigearthnet", MULTI_SENSOR, "S2"): 86.8}
# Input columns in the paper's order: single sensors first, radar before optical.
_SENSOR_ORDER = ("sar", "s2", "rgb", "dsm", "mul", "pan")


def sensors_label(fed: str) -> str:
    """ "s2+sar" (as a job records it) -> "SAR+S2": one spelling whatever the stacking order."""
    sensors = fed.split("+")
    unknown = [s for s in sensors if s not in _SENSOR_ORDER]
    if unknown:
        raise ValueError(f"unknown sensors {unknown} in {fed!r}")
    return "+".join(s.upper() for s in sorted(sensors, key=_SENSOR_ORDER.index))


def _column_key(label: str) -> tuple[int, list[int]]:
    sensors = [s.lower() for s in label.split("+")]
    return len(sensors), [_SENSOR_ORDER.index(s) for s in sensors]


def parse_rows(rows: Iterable[str]) -> dict[str, str]:
    """``["fig4_sar=SAR only", ...]`` -> {init: row label}, in the given (plotting) order."""
    parsed: dict[str, str] = {}
    for row in rows:
        init, sep, label = row.partition("=")
        if not sep or not init or not label:
            raise ValueError(f"row {row!r}: expected INIT=LABEL")
        parsed[init] = label
    return parsed


def load_cells(paths: Iterable[str | Path], rows: dict[str, str]) -> pd.DataFrame:
    """One line per job and panel metric: task, init, row, sensors, seed, value.

    Jobs of inits outside ``rows`` or of fractions outside the panels are skipped; a job
    file without the ``sensors`` it was fed (written before jobs recorded it) is an error,
    as guessing would put it in the wrong column.
    """
    panels = {panel.task: panel for panel in PANELS}
    records = []
    for path in map(Path, paths):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(path, f"unreadable finetuning metrics: {exc}") from exc
        panel = panels.get(metrics.get("task"))
        if panel is None or metrics.get("init") not in rows:
            continue
        if not math.isclose(float(metrics.get("fraction", math.nan)), panel.fraction):
            continue
        if "sensors" not in metrics or panel.metric not in metrics:
            raise DataError(
                path, f"needs 'sensors' and {panel.metric!r}; finetune the cell again to add them"
            )
        records.append(
            {
                "task": panel.task,
                "init": metrics["init"],
                "row": rows[metrics["init"]],
                "sensors": sensors_label(metrics["sensors"]),
                "seed": int(metrics["seed"]),
                "value": float(metrics[panel.metric]),
            }
        )
    return pd.DataFrame.from_records(
        records, columns=["task", "init", "row", "sensors", "seed", "value"]
    )


def summarise(cells: pd.DataFrame, rows: dict[str, str]) -> pd.DataFrame:
    """Long form: one line per (panel, pretraining row, sensors fed) with mean, std, n and paper."""
    columns = sorted(set(cells.sensors), key=_column_key)
    lines = []
    for panel in PANELS:
        for init, row in rows.items():
            for sensors in columns:
                values = cells[
                    (cells.task == panel.task) & (cells.init == init) & (cells.sensors == sensors)
                ].value
                mean = float(values.mean()) if len(values) else math.nan
                std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                paper = PAPER.get((panel.task, row, sensors), math.nan)
                lines.append(
                    {
                        "task": panel.task,
                        "fraction": panel.fraction,
                        "metric": panel.metric,
                        "pretraining": row,
                        "init": init,
                        "sensors": sensors,
                        "ours_mean": mean,
                        "ours_std": std,
                        "seeds": len(values),
                        "paper": paper,
                        "difference": mean - paper,
                        "higher_is_better": panel.higher_is_better,
                    }
                )
    return pd.DataFrame(lines)


def plot(summary: pd.DataFrame, path: Path) -> None:
    """Grouped bars per panel: a group per input column, a bar per pretraining row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.2))
    for ax, panel in zip(axes, PANELS, strict=True):
        part = summary[summary.task == panel.task]
        columns = list(dict.fromkeys(part.sensors))
        rows = list(dict.fromkeys(part.pretraining))
        width = 0.8 / max(1, len(rows))
        for r, row in enumerate(rows):
            line = part[part.pretraining == row].set_index("sensors").reindex(columns)
            xs = [c + (r - (len(rows) - 1) / 2) * width for c in range(len(columns))]
            errors = line.ours_std.fillna(0.0)
            ax.bar(xs, line.ours_mean, width, yerr=errors, capsize=3, label=row)
            for x, mean, std, seeds in zip(xs, line.ours_mean, errors, line.seeds, strict=True):
                if seeds:
                    text = f"{mean:.2f}" + (f"\n±{std:.2f}" if seeds > 1 else "")
                    ax.annotate(text, (x, mean + std), ha="center", va="bottom", fontsize=7)
            known = line.paper.notna()
            if known.any():  # a dashed line across the bar at the paper's value
                paper_x = [x for x, k in zip(xs, known, strict=True) if k]
                ax.hlines(line.paper[known], [x - width / 2 for x in paper_x],
                          [x + width / 2 for x in paper_x], colors="black", linestyles="--",
                          zorder=3, label="paper" if r == len(rows) - 1 else None)  # fmt: skip
        observed = pd.concat([part.ours_mean - part.ours_std.fillna(0.0), part.paper]).dropna()
        if len(observed):  # start near the data: the differences are a few points, not 80
            top = pd.concat([part.ours_mean + part.ours_std.fillna(0.0), part.paper]).max()
            low = observed.min()
            ax.set_ylim(max(0.0, low - 0.15 * (top - low + 1e-9)), top + 0.2 * (top - low + 1e-9))
        ax.set_xticks(range(len(columns)), [f"fed {c}" for c in columns])
        ax.set_title(panel.title)
        ax.set_ylabel(panel.metric)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, title="pretrained on", fontsize=8)
    fig.suptitle("Fig. 4: single-sensor vs multi-sensor pretraining (mean ± std over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_fig4(
    paths: Sequence[str | Path], rows: Iterable[str], png: str | Path, csv: str | Path
) -> pd.DataFrame:
    """Read the cells, write the CSV and the figure; returns the summary."""
    parsed = parse_rows(rows)
    cells = load_cells(paths, parsed)
    if cells.empty:
        raise DataError(Path(png).parent, f"no finetuning result of the Fig. 4 rows {parsed}")
    summary = summarise(cells, parsed)
    for out in (Path(png), Path(csv)):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(csv, summary.to_csv(index=False))
    plot(summary, Path(png))
    return summary
