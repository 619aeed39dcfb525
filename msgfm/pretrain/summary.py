"""One summary image per pretrained variant for the Snakemake report (``snakemake --report``).

The image stacks the job's training curves, read back from its MLflow run (the only record of
the whole history: a resumed job continues the same run), above the reconstruction figures the
job wrote into ``<out>/figures``. A variant that reconstructs teacher features (EVA-style) has
no pixel reconstructions; its summary says so under the curves instead of leaving a gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msgfm.errors import MsgfmError
from msgfm.files import atomic_path
from msgfm.tracking import read_run_id, resolve_tracking_uri

# Per-step bookkeeping, not losses: kept out of the per-entry panel.
_NOT_ENTRY_LOSSES = {"cross_rate"}

History = dict[str, tuple[list[int], list[float]]]


def metric_history(uri: str, run_id: str) -> History:
    """Every metric of the run as (steps, values), in step order."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    history: History = {}
    for key in client.get_run(run_id).data.metrics:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        history[key] = ([m.step for m in points], [m.value for m in points])
    return history


def entry_losses(history: History) -> list[str]:
    """The per-entry loss keys, ``<loss>/<source>/<sensor>`` (e.g. ``l1/mdas/dsm``).

    The self/cross split of an entry (one more path level) is left out: the entry total is the
    curve a reader compares between variants.
    """
    return sorted(
        key
        for key in history
        if key.count("/") == 2 and key.split("/", 1)[0] not in _NOT_ENTRY_LOSSES
    )


def _curves_image(history: History, title: str, note: str) -> np.ndarray:
    """Loss, per-entry losses and learning rate against the step, as an RGB float array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("total loss", [k for k in ("loss", "aux") if k in history]),
        ("per-entry loss", entry_losses(history)),
        ("learning rate", ["lr"] if "lr" in history else []),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            steps, values = history[key]
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if keys:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.01, note, ha="center", fontsize=8, style="italic")
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return image


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Images one above the other, narrower ones padded with white on the right."""
    width = max(im.shape[1] for im in images)
    padded = [
        np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=1.0) for im in images
    ]
    return np.concatenate(padded, axis=0)


def write_summary(
    job_dir: str | Path, path: str | Path, results_root: str | Path, tracking_uri: str | None
) -> Path:
    """Write the variant's summary PNG from its job folder (``mlflow_run_id``, ``figures/``)."""
    import matplotlib.pyplot as plt

    job_dir, path = Path(job_dir), Path(path)
    run_id = read_run_id(job_dir)
    if run_id is None:
        raise MsgfmError(f"{job_dir}: no mlflow_run_id file; the pretraining job has not run")
    history = metric_history(resolve_tracking_uri(tracking_uri, results_root), run_id)
    if "loss" not in history:
        raise MsgfmError(f"{job_dir}: MLflow run {run_id} logged no 'loss' metric")
    figures = sorted((job_dir / "figures").glob("*.png"))
    note = "" if figures else "no pixel reconstructions: this variant reconstructs teacher features"
    images = [_curves_image(history, f"{job_dir.name}: training curves", note)]
    images += [plt.imread(figure)[..., :3].astype(np.float32) for figure in figures]
    with atomic_path(path) as tmp:
        plt.imsave(tmp, _stack(images), format="png")
    return path
