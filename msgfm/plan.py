"""The jobs a configuration plans: which encoders are pretrained, which finetuning cells run.

The one home of the config -> jobs expansion. The workflow builds its targets and job configs
from it (rules/common.smk), ``estimate-cost`` prices exactly these jobs (msgfm.cost), and the
pretraining job reads its sources through it, so the three cannot drift apart. Snakemake
imports it while it parses the Snakefile: it must not import torch (nor anything heavy).

- A pretraining variant runs when its ``table`` is on, a paper table always, a figure (paper
  §4.3, Fig. 4) when ``figures.<name>`` is true, and whenever a finetuning cell that runs
  starts from it.
- A finetuning cell runs when a grid that runs names it (``finetune.run``; by default every grid
  but those of figures turned off) or a figure that is on needs it (the grid named as the
  figure). A cell several grids name is one job: Table 6's 1 % BigEarthNet cell of
  t6_moe_cross50 also fills Table 12 (App. C.2) and Fig. 4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from msgfm.tables.paper import TABLES

TABLE_NAMES = tuple(TABLES)
# Finetuning inits besides the pretraining variants: Table 3's Random and IN-22k rows.
BASELINE_INITS = ("in22k", "random")
# Job folders under results_root (the rules' output patterns start with them).
SHARDS_DIR = "shards"
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
SENSORS_DIR = "finetune_sensors"  # cells fed a subset of the task's sensors (figures only)
# Pretraining settings of the rule, not of the training job: the process layout reaches the job
# as its world size, the epoch cap and overrides as the variant's epochs.
RULE_ONLY = frozenset({"epochs_cap", "epochs_override", "nodes", "gpus_per_node", "threads"})


class Cell(NamedTuple):
    """One finetuning job: a task at a training fraction from an init, by transfer method
    (App. C.2), seed and the sensors fed ("all", or "+"-joined names: Fig. 4's sar, s2)."""

    task: str
    init: str
    transfer: str
    fraction: str  # as paths spell it (fraction_label)
    seed: int
    sensors: str = "all"

    @property
    def job_dir(self) -> str:
        """Its folder under results_root; cells fed a subset of the sensors live apart from
        the tables' cells."""
        cell = f"{self.task}/{self.init}/{self.transfer}/frac{self.fraction}/seed{self.seed}"
        if self.sensors == "all":
            return f"{FINETUNE_DIR}/{cell}"
        return f"{SENSORS_DIR}/{self.sensors}/{cell}"


def pretrain_job_dir(variant: str) -> str:
    """A variant's folder under results_root."""
    return f"{PRETRAIN_DIR}/{variant}"


def fraction_label(fraction: float | str) -> str:
    """A fraction as paths and tags spell it (0.01 -> "0.01", 1.0 -> "1")."""
    return f"{float(fraction):g}"


def experiment(table: str) -> str:
    """The MLflow experiment of a table or figure, given as a variant's ``table`` or by its
    name in TABLE_NAMES: "6" and "table6" -> msgfm-table6, "fig4" -> msgfm-fig4."""
    return f"msgfm-table{table}" if str(table).isdigit() else f"msgfm-{table}"


def experiments(config: Mapping[str, Any]) -> list[str]:
    """One experiment per paper table and figure: its pretraining runs, the finetuning runs that
    start from them and its "tables" run (msgfm.tracking)."""
    tables = {experiment(v["table"]) for v in config["variants"].values()}
    return sorted(tables | {experiment(name) for name in TABLE_NAMES})


def variant_sources(sources: Mapping[str, Any], variant: Mapping[str, Any]) -> list[str]:
    """The ``pretrain.sources`` a variant reads, in their configured order: all, or those its
    ``sources`` names (paper §4.3: Fig. 4's single-sensor variants read SEN12MS only)."""
    wanted = variant.get("sources")
    if not wanted:
        return list(sources)
    unknown = sorted(set(wanted) - set(sources))
    if unknown:
        raise ValueError(
            f"variants.{variant.get('name')}.sources: {unknown} are not among "
            f"pretrain.sources {list(sources)}"
        )
    return [name for name in sources if name in wanted]


def variant_epochs(config: Mapping[str, Any], name: str) -> int:
    """A variant's epochs as its job trains them: capped by ``pretrain.epochs_cap``, unless
    ``pretrain.epochs_override`` names it (the demo's encoder compared with random init)."""
    pretrain = config["pretrain"]
    epochs = int(config["variants"][name]["epochs"])
    if pretrain.get("epochs_cap"):
        epochs = min(epochs, int(pretrain["epochs_cap"]))
    return int((pretrain.get("epochs_override") or {}).get(name, epochs))


def variant_model(model: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """The model settings of a variant's encoder: the shared ones with its MoE switch (Table 6),
    as pretraining builds it and finetuning loads it."""
    settings = json.loads(json.dumps(model))
    settings.setdefault("moe", {})["enabled"] = bool(variant["moe"])
    return settings


def pretrain_job(
    config: Mapping[str, Any], variant: str, shards_root: str, results_root: str
) -> dict[str, Any]:
    """The resolved config of one pretraining variant, as its job receives it: the variant with
    the epochs it trains, the model, the pretraining settings of the job itself (the rule's
    own, :data:`RULE_ONLY`, stay with the rule) and where it reads and writes."""
    settings = config["pretrain"]
    spec = {**config["variants"][variant], "name": variant}
    spec["epochs"] = variant_epochs(config, variant)
    return {
        "variant": spec,
        "model": config["model"],
        "pretrain": {k: v for k, v in settings.items() if k not in RULE_ONLY},
        "world_size": settings["nodes"] * settings["gpus_per_node"],
        "shards_root": str(shards_root),
        "results_root": str(results_root),
        "experiment": experiment(spec["table"]),
    }


def cell_inputs(config: Mapping[str, Any], cell: Cell) -> dict[str, str]:
    """A cell's input files under results_root: the task's shard set, the encoder it starts
    from (a pretraining variant's) and its training subset (fractions below 1)."""
    inputs = {"shards": f"{SHARDS_DIR}/downstream/{cell.task}"}
    if cell.init in config["variants"]:
        inputs["encoder"] = f"{pretrain_job_dir(cell.init)}/encoder.pt"
    if float(cell.fraction) < 1.0:
        subset = f"frac{cell.fraction}_seed{cell.seed}.txt"
        inputs["subset"] = f"{FINETUNE_DIR}/subsets/{cell.task}/{subset}"
    return inputs


def init_model(config: Mapping[str, Any], init: str) -> dict[str, Any]:
    """The model config a cell builds: its variant's as it was pretrained, else the shared one
    (the random and IN-22k inits)."""
    variants = config["variants"]
    return variant_model(config["model"], variants[init]) if init in variants else config["model"]


def init_experiment(config: Mapping[str, Any], init: str) -> str:
    """A finetuning run goes where its encoder's pretraining run is: one job however many
    grids and tables share the cell (the tables step tags it with every table it feeds).
    The random and ImageNet-22k inits are Table 3's baselines."""
    variants = config["variants"]
    return experiment(variants[init]["table"] if init in variants else "3")


def init_tags(config: Mapping[str, Any], init: str) -> dict[str, str]:
    """Tags of the encoder a cell starts from, as its pretraining run carries them, so that the
    MLflow compare view lines finetuning runs up by ablation row. Fixed per init: they are part
    of the job's config (a change retrains the cell, as its encoder changed too)."""
    variant = config["variants"].get(init)
    return {"table": "3"} if variant is None else ablation_tags(variant)


def ablation_tags(variant: Mapping[str, Any]) -> dict[str, str]:
    """A variant's place on its table's ablation axes, as MLflow tags: its pretraining run and
    every finetuning run from its encoder carry the same ones (settings left unset: no tag)."""
    tags = {
        "table": str(variant["table"]),
        "moe": str(bool(variant["moe"])),
        "cross_rate": str(variant["cross_rate"]),
    }
    optional = ("objective", "teacher", "sensors")
    tags.update({k: str(variant[k]) for k in optional if variant.get(k) is not None})
    return tags


def finetune_job(config: Mapping[str, Any], cell: Cell, results_root: str) -> dict[str, Any]:
    """The resolved config of one finetuning cell, as its job receives it: the task's settings
    (``finetune.defaults`` under ``finetune.tasks.<task>``), the init's model and the cell's
    input files under ``results_root``."""
    settings = config["finetune"]
    inputs = {k: str(Path(results_root) / v) for k, v in cell_inputs(config, cell).items()}
    job = {
        "task": cell.task,
        "init": cell.init,
        "transfer": cell.transfer,
        "fraction": float(cell.fraction),
        "seed": int(cell.seed),
        "checkpoint": inputs.get("encoder"),
        "subset": inputs.get("subset"),
        "shards": inputs["shards"],
        "model": init_model(config, cell.init),
        "finetune": {**settings["defaults"], **settings["tasks"].get(cell.task, {})},
        "world_size": settings["gpus"],
        "results_root": str(results_root),
        "experiment": init_experiment(config, cell.init),
        "tags": init_tags(config, cell.init),
    }
    # Only for cells fed a subset of the sensors: the other cells' configs (and so their config
    # hashes) stay as they were.
    if cell.sensors != "all":
        job["sensors"] = cell.sensors.split("+")
    return job


def run_grids(config: Mapping[str, Any]) -> list[str]:
    """The grids that run: ``finetune.run``, or every grid but those of figures turned off."""
    settings, figures = config["finetune"], config["figures"]
    if settings["run"] is None:
        return [name for name in settings["grids"] if figures.get(name, True)]
    unknown = sorted(set(settings["run"]) - set(settings["grids"]))
    if unknown:
        raise ValueError(
            f"config finetune.run names grids {unknown}; defined: {sorted(settings['grids'])}"
        )
    return list(settings["run"])


def grid_cells(config: Mapping[str, Any], name: str) -> list[Cell]:
    """The cells of one grid, validated, each once, sorted."""
    settings, variants = config["finetune"], config["variants"]
    if name not in settings["grids"]:
        raise ValueError(
            f"config finetune.grids has no {name!r} grid, which figures.{name} needs "
            f"(defined: {sorted(settings['grids'])})"
        )
    grid = settings["grids"][name]
    cells = set()
    for init in grid["inits"]:
        if init not in variants and init not in BASELINE_INITS:
            raise ValueError(
                f"config finetune.grids.{name}.inits: {init!r} is neither a variant "
                f"({', '.join(variants)}) nor one of {list(BASELINE_INITS)}"
            )
        if init == "in22k" and not settings["in22k"]:
            continue
        for task, fractions in grid["tasks"].items():
            if task not in config["downstream_tasks"]:
                raise ValueError(
                    f"config finetune.grids.{name}.tasks: {task!r} is not among "
                    f"downstream_tasks {config['downstream_tasks']}"
                )
            for fraction in fractions:
                for transfer in grid["transfers"]:
                    for seed in grid["seeds"] or settings["seeds"]:
                        for sensors in grid["sensors"]:
                            label = fraction_label(fraction)
                            cells.add(Cell(task, init, transfer, label, seed, sensors))
    return sorted(cells)


def figure_grids(config: Mapping[str, Any]) -> list[str]:
    """The figures that are on; each needs every cell of the grid of its name."""
    return [name for name, wanted in config["figures"].items() if wanted]


def table_cells(config: Mapping[str, Any]) -> list[Cell]:
    """The cells that feed the tables: those of the grids that run fed all the task's sensors."""
    cells = {cell for name in run_grids(config) for cell in grid_cells(config, name)}
    return sorted(cell for cell in cells if cell.sensors == "all")


def finetune_cells(config: Mapping[str, Any]) -> dict[Cell, str]:
    """Every finetuning job, each once, with the first grid that names it (the grids that run,
    then those of the figures that are on): the table its cost is counted under."""
    grids = run_grids(config)
    grids += [name for name in figure_grids(config) if name not in grids]
    cells: dict[Cell, str] = {}
    for name in grids:
        for cell in grid_cells(config, name):
            cells.setdefault(cell, name)
    return cells


def pretrain_variants(config: Mapping[str, Any]) -> list[str]:
    """Every pretraining job: the variants whose table or figure is on and those a finetuning
    cell that runs starts from, in the configured order."""
    variants, figures = config["variants"], config["figures"]
    started = {cell.init for cell in finetune_cells(config)}
    return [
        name
        for name, variant in variants.items()
        if figures.get(variant["table"], True) or name in started
    ]
