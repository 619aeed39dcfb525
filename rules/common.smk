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
FINETUNE = RESULTS / "finetune"
TABLES = RESULTS / "tables"
TABLE_NAMES = ("table3", "table5", "table6")
FINETUNE_EXPERIMENT = "msgfm-finetune"
EXPERIMENTS = sorted(
    {f"msgfm-table{v['table']}" for v in VARIANTS.values()} | {FINETUNE_EXPERIMENT}
)
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
    """Everything the workflow builds: shard sets, encoders (+ report summaries), finetuned cells
    and the tables."""
    return (
        [SHARDS / "pretrain" / source for source in PRETRAIN_SOURCES]
        + [SHARDS / "downstream" / task for task in DOWNSTREAM_TASKS]
        + [PRETRAIN / variant / "encoder.pt" for variant in VARIANTS]
        + [PRETRAIN / variant / "summary.png" for variant in VARIANTS]
        + finetune_targets()
        + [TABLES / f"{name}.md" for name in TABLE_NAMES]
    )


# Finetuning (rules/finetune.smk).
FINETUNE_INITS = {"random", "in22k"}  # besides the pretraining variants


def fraction_label(fraction):
    """A fraction as paths and tags spell it (0.01 -> "0.01", 1.0 -> "1");
    msgfm.finetune.subsets.format_fraction is the same rule."""
    return f"{float(fraction):g}"


def finetune_cells():
    """Every configured (task, init, transfer, fraction, seed) cell, each once."""
    settings = config["finetune"]
    names = settings["run"] if settings["run"] is not None else list(settings["grids"])
    unknown = sorted(set(names) - set(settings["grids"]))
    if unknown:
        raise ValueError(
            f"config finetune.run names grids {unknown}; defined: {sorted(settings['grids'])}"
        )
    cells = set()
    for name in names:
        grid = settings["grids"][name]
        for init in grid["inits"]:
            if init not in VARIANTS and init not in FINETUNE_INITS:
                raise ValueError(
                    f"config finetune.grids.{name}.inits: {init!r} is neither a variant "
                    f"({', '.join(VARIANTS)}) nor one of {sorted(FINETUNE_INITS)}"
                )
            if init == "in22k" and not settings["in22k"]:
                continue
            for task, fractions in grid["tasks"].items():
                if task not in DOWNSTREAM_TASKS:
                    raise ValueError(
                        f"config finetune.grids.{name}.tasks: {task!r} is not among "
                        f"downstream_tasks {DOWNSTREAM_TASKS}"
                    )
                for fraction in fractions:
                    for transfer in grid["transfers"]:
                        for seed in grid["seeds"] or settings["seeds"]:
                            label = fraction_label(fraction)
                            cells.add((task, init, transfer, label, seed))
    return sorted(cells)


def finetune_targets():
    return [
        FINETUNE / t / i / tr / f"frac{f}" / f"seed{s}" / "metrics.json"
        for t, i, tr, f, s in finetune_cells()
    ]


def finetune_inputs(wildcards):
    """The task's shard set, the encoder to start from and the training subset, if any."""
    inputs = {"shards": SHARDS / "downstream" / wildcards.task}
    if wildcards.init in VARIANTS:
        inputs["encoder"] = PRETRAIN / wildcards.init / "encoder.pt"
    if float(wildcards.fraction) < 1.0:
        inputs["subset"] = (
            FINETUNE
            / "subsets"
            / wildcards.task
            / f"frac{wildcards.fraction}_seed{wildcards.seed}.txt"
        )
    return inputs


def finetune_model_config(init):
    """The model config of an init: a variant's MoE switch as it was pretrained."""
    model = json.loads(json.dumps(config["model"]))
    if init in VARIANTS:
        model.setdefault("moe", {})["enabled"] = bool(VARIANTS[init]["moe"])
    return model


def finetune_job_config(wildcards, input):
    """The resolved config of one finetuning cell, as the job receives it (JSON)."""
    settings = config["finetune"]
    task_settings = {
        **settings["defaults"],
        **settings["tasks"].get(wildcards.task, {}),
    }
    job = {
        "task": wildcards.task,
        "init": wildcards.init,
        "transfer": wildcards.transfer,
        "fraction": float(wildcards.fraction),
        "seed": int(wildcards.seed),
        "checkpoint": str(input.encoder) if "encoder" in input.keys() else None,
        "subset": str(input.subset) if "subset" in input.keys() else None,
        "shards": str(input.shards),
        "model": finetune_model_config(wildcards.init),
        "finetune": task_settings,
        "results_root": str(RESULTS),
        "tracking_uri": config["tracking_uri"],
        "experiment": FINETUNE_EXPERIMENT,
    }
    return json.dumps(job, sort_keys=True)
