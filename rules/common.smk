# Config lookups and input functions shared by the rule files (no rules here).
from pathlib import Path

DATA = Path(config["data_root"])
RESULTS = Path(config["results_root"])
LOGS = RESULTS / "logs"
SHARDS = RESULTS / "shards"

PRETRAIN_SOURCES = config["pretrain_sources"]
DOWNSTREAM_TASKS = config["downstream_tasks"]
DATASETS = sorted(set(PRETRAIN_SOURCES) | set(DOWNSTREAM_TASKS))


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    source="|".join(PRETRAIN_SOURCES) or "none",
    task="|".join(DOWNSTREAM_TASKS) or "none",


def ready_marker(dataset):
    """The file a dataset's download (or demo generation) writes last, once complete."""
    return DATA / dataset / ".msgfm-ready.json"


def downstream_options(wildcards):
    """Command-line options of a downstream tiler that only some tasks have."""
    tiling = config["tiling"]
    if wildcards.task == "vaihingen":
        return (
            f"--crop {tiling['vaihingen_crop']} --stride {tiling['vaihingen_stride']}"
        )
    return ""


def all_targets():
    """Everything the workflow builds so far: the pretraining and downstream shard sets."""
    return [SHARDS / "pretrain" / source for source in PRETRAIN_SOURCES] + [
        SHARDS / "downstream" / task for task in DOWNSTREAM_TASKS
    ]
