"""The plan of the jobs (msgfm.plan): torch-free, and the same jobs for the workflow and the
GPU-hour estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The rules whose jobs estimate-cost prices (rules/pretrain.smk, rules/finetune.smk).
PRICED_RULES = {"pretrain", "finetune", "finetune_sensor_subset"}


def test_the_plan_and_its_pricing_import_without_torch() -> None:
    """Snakemake imports them while it parses the Snakefile: torch would cost seconds per start."""
    modules = "msgfm.plan, msgfm.cost, msgfm.config_checks, msgfm.schema_errors"
    code = f"import sys, {modules}; print([m for m in sys.modules if 'torch' in m])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def planned_jobs(configfiles: list[str], results: Path) -> list[str]:
    """The job folders (relative to the results root) of the priced rules in Snakemake's DAG."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", "--configfile", *configfiles],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    header = lines[0]
    assert header[:3] == ["output_file", "date", "rule"], result.stdout[:500]
    return [
        Path(output).parent.relative_to(results).as_posix()
        for output, _, rule, *_ in lines[1:]
        if rule in PRICED_RULES
    ]


@pytest.mark.parametrize(
    ("configfiles", "extra"),
    [
        (["config/config.yaml"], {}),  # the paper: Table 12 and Fig. 4 share Table 6 cells
        (["config/config.yaml", "config/demo.yaml"], {}),  # figures.fig4 off
        (["config/config.yaml", "config/demo.yaml"], {"figures": {"fig4": True}}),
    ],
    ids=["paper", "demo", "demo-fig4"],
)
def test_estimate_cost_prices_the_jobs_snakemake_plans(
    configfiles: list[str], extra: dict, tmp_path: Path
) -> None:
    results = tmp_path / "results"  # empty: Snakemake plans every job
    override = tmp_path / "override.yaml"
    override.write_text(
        json.dumps({"results_root": str(results), "data_root": str(tmp_path / "d"), **extra})
    )
    configfiles = [*configfiles, str(override)]
    out = tmp_path / "jobs.csv"
    result = subprocess.run(
        [sys.executable, "-m", "msgfm", "estimate-cost", "--configfile", *configfiles,
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    priced = pd.read_csv(out).job.tolist()
    planned = planned_jobs(configfiles, results)
    assert len(set(planned)) == len(planned)
    assert sorted(priced) == sorted(planned)  # each job once, none missing, none extra


@pytest.mark.parametrize("overlay", [None, "demo.yaml"])
def test_every_paper_row_we_run_names_a_configured_variant(overlay: str | None) -> None:
    """A typo in a row's init would leave that row silently empty in every report."""
    from msgfm.plan import BASELINE_INITS
    from msgfm.tables.paper import TABLES

    variants = set(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["variants"])
    if overlay:  # Snakemake merges a further config file's variants into the paper's
        variants |= set(yaml.safe_load((REPO / "config" / overlay).read_text())["variants"])
    runs = {row.init for table in TABLES.values() for row in table.rows if row.init is not None}
    unknown = sorted(runs - variants - set(BASELINE_INITS))
    assert not unknown, f"paper rows name no configured variant: {unknown}"
