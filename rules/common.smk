# Config lookups and input functions shared by the rule files (no rules here).
import json
from pathlib import Path

DATA = Path(config["data_root"])
RESULTS = Path(config["results_root"])
LOGS = RESULTS / "logs"
SHARDS = RESULTS / "shards"
PRETRAIN = RESULTS / "pretrain"

PRETRAIN_SOURCES = config["pretrain_sources"]
DOWNSTREAM_TASKS = config["downstream_tasks"]
DATASETS = sorted(set(PRETRAIN_SOURCES) | set(DOWNSTREAM_TASKS))
VARIANTS = config["variants"]
EXPERIMENTS = sorted({f"msgfm-table{v['table']}" for v in VARIANTS.values()})
# Settings of the pretraining rule itself, not of the training job.
_RULE_ONLY = {"epochs_cap", "gpus", "threads"}


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    source="|".join(PRETRAIN_SOURCES) or "none",
    task="|".join(DOWNSTREAM_TASKS) or "none",
    variant="|".join(VARIANTS) or "none",


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


def pretrain_shards(wildcards):
    """The pretraining shard sets that the configured sources read."""
    sources = config["pretrain"]["sources"].values()
    return sorted(
        {SHARDS / "pretrain" / d for source in sources for d in source["datasets"]}
    )


def pretrain_job_config(wildcards):
    """The resolved config of one pretraining variant, as the job receives it (JSON)."""
    variant = {**VARIANTS[wildcards.variant], "name": wildcards.variant}
    cap = config["pretrain"]["epochs_cap"]
    if cap:
        variant["epochs"] = min(variant["epochs"], cap)
    job = {
        "variant": variant,
        "model": config["model"],
        "pretrain": {
            k: v for k, v in config["pretrain"].items() if k not in _RULE_ONLY
        },
        "shards_root": str(SHARDS / "pretrain"),
        "results_root": str(RESULTS),
        "tracking_uri": config["tracking_uri"],
        "experiment": f"msgfm-table{variant['table']}",
    }
    return json.dumps(job, sort_keys=True)


def launcher(gpus):
    """One process per GPU through torchrun (DDP), a plain interpreter for one."""
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m msgfm"
    return "python -m msgfm"


def all_targets():
    """Everything the workflow builds so far: shard sets and pretrained encoders."""
    return (
        [SHARDS / "pretrain" / source for source in PRETRAIN_SOURCES]
        + [SHARDS / "downstream" / task for task in DOWNSTREAM_TASKS]
        + [PRETRAIN / variant / "encoder.pt" for variant in VARIANTS]
    )
