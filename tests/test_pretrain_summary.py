"""The report's per-variant summary image, from a real MLflow run and real figure files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
plt = pytest.importorskip("matplotlib.pyplot")

from msgfm.errors import MsgfmError  # noqa: E402
from msgfm.pretrain.summary import entry_losses, metric_history, write_summary  # noqa: E402
from msgfm.tracked_run import TrackedRun  # noqa: E402
from msgfm.tracking import resolve_tracking_uri  # noqa: E402


def logged_job(results: Path, job: Path) -> TrackedRun:
    run = TrackedRun(
        uri=resolve_tracking_uri(None, results), experiment="msgfm-table6", run_name=job.name,
        state_dir=job, results_root=results, tags={}, params={}, config_hash="c",
    )  # fmt: skip
    # Logged out of order across two "resumes": the history must come back sorted by step.
    for step in (4, 2, 6):
        metrics = {"loss": 1.0 / step, "lr": 1e-4, "l1/mdas/dsm": 0.5, "l1/mdas/dsm/self": 0.4}
        run.log_metrics({**metrics, "cross_rate/mdas/dsm": 0.5}, step=step)
    run.finish()
    return run


def test_entry_losses_keep_entry_totals_only() -> None:
    history = {k: ([0], [0.0]) for k in ("loss", "l1/a/b", "l1/a/b/cross", "cross_rate/a/b")}
    assert entry_losses(history) == ["l1/a/b"]


def test_summary_stacks_curves_above_each_figure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = tmp_path / "pretrain" / "t6_moe_self"
    run = logged_job(tmp_path, job)
    history = metric_history(resolve_tracking_uri(None, tmp_path), run.run_id)
    assert history["loss"][0] == [2, 4, 6]

    curves_only = plt.imread(write_summary(job, tmp_path / "a.png", tmp_path, None))
    (job / "figures").mkdir()
    figure = np.zeros((50, 1500, 3), dtype=np.float32)  # wider than the curves: padding
    plt.imsave(job / "figures" / "mdas_dsm.png", figure)
    with_figure = plt.imread(write_summary(job, tmp_path / "b.png", tmp_path, None))
    assert with_figure.shape[0] == curves_only.shape[0] + 50
    assert with_figure.shape[1] == 1500
    assert np.allclose(with_figure[-50:, :, :3], 0.0)


def test_summary_of_a_job_that_never_ran_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(MsgfmError, match="t3_msgfm: no mlflow_run_id"):
        write_summary(tmp_path / "t3_msgfm", tmp_path / "s.png", tmp_path, None)
