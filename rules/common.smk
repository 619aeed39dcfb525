# Config lookups and input functions shared by the rule files (no rules here).
import json
import os
import subprocess
import sys
from pathlib import Path

from msgfm import plan
from msgfm.cost import requeue_limit
from msgfm.plan import BASELINE_INITS, TABLE_NAMES
from msgfm.tracking import check_cluster_store, resolve_tracking_uri

DATA = Path(config["data_root"])
RESULTS = Path(config["results_root"])
LOGS = RESULTS / "logs"
SHARDS = RESULTS / plan.SHARDS_DIR
PRETRAIN = RESULTS / plan.PRETRAIN_DIR

PRETRAIN_SOURCES = config["pretrain_sources"]
DOWNSTREAM_TASKS = config["downstream_tasks"]
DATASETS = sorted(set(PRETRAIN_SOURCES) | set(DOWNSTREAM_TASKS))
VARIANTS = config["variants"]
FINETUNE = RESULTS / plan.FINETUNE_DIR
TABLES = RESULTS / "tables"
# Cells fed a subset of the task's sensors (finetune.grids.<grid>.sensors).
FINETUNE_SENSORS = RESULTS / plan.SENSORS_DIR
FIGURES = RESULTS / "figures"
# Snakemake's wall time and memory of every training job (bench/demo_dag.py reads them).
BENCHMARKS = RESULTS / "benchmarks"
# The env of the jobs that build the model: model.moe.backend tutel needs tutel's kernels, which
# only envs/pretrain_tutel.yaml builds; finetuning rebuilds the encoder with its backend too.
TRAIN_ENV = (
    "../envs/pretrain_tutel.yaml"
    if config["model"].get("moe", {}).get("backend") == "tutel"
    else "../envs/pretrain.yaml"
)

# The MLflow store travels to the jobs in the environment (locally, and through sbatch's
# --export=ALL), never in their params: switching to a tracking server must not rerun finished
# jobs. MLFLOW_TRACKING_URI set by the user wins, as in msgfm.tracking.resolve_tracking_uri.
if config["tracking_uri"]:
    os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking_uri"])


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    source="|".join(PRETRAIN_SOURCES) or "none",
    task="|".join(DOWNSTREAM_TASKS) or "none",
    variant="|".join(VARIANTS) or "none",


def ready_marker(dataset):
    """The file a dataset's download (or demo generation) writes last, once complete."""
    return DATA / dataset / ".msgfm-ready.json"


def downstream_tiler_options(wildcards):
    """The task's tiler options as set in tiling.downstream, as JSON (msgfm.data.registry
    holds their defaults and checks them)."""
    options = config["tiling"]["downstream"].get(wildcards.task, {})
    return json.dumps(options, sort_keys=True)


def pretrain_shards(wildcards):
    """The pretraining shard sets that the variant's sources read (msgfm.plan)."""
    sources = config["pretrain"]["sources"]
    names = plan.variant_sources(sources, VARIANTS[wildcards.variant])
    return sorted(
        {SHARDS / "pretrain" / d for name in names for d in sources[name]["datasets"]}
    )


def pretrain_job_config(wildcards):
    """The resolved config of one pretraining variant, as the job receives it (JSON)."""
    job = plan.pretrain_job(config, wildcards.variant, SHARDS / "pretrain", RESULTS)
    return json.dumps(job, sort_keys=True)


def gpu_request(nodes, gpus_per_node):
    """The SLURM GPU request of a training job (msgfm.train.launch): on one node ``--gpus G``,
    which the plugin's job step then holds for torchrun; on several ``--gres gpu:G`` per node,
    one srun task each. The unused key is zero or empty, which the plugin leaves out."""
    if nodes == 1:
        return {"gpu": gpus_per_node, "gres": ""}
    return {"gpu": 0, "gres": f"gpu:{gpus_per_node}"}


PRETRAIN_GPUS = gpu_request(
    config["pretrain"]["nodes"], config["pretrain"]["gpus_per_node"]
)
FINETUNE_GPUS = gpu_request(1, config["finetune"]["gpus"])


def pretrain_requeues(wildcards):
    """How often a variant's SLURM job may requeue itself at its time limit: the chain its
    estimated runtime needs (msgfm.cost) plus resources.requeue_spare. A resource, not a
    param: a changed estimate must not retrain a finished encoder."""
    return requeue_limit(
        config,
        wildcards.variant,
        shard_sizes_now(),
        runtime_min=config["resources"]["pretrain_runtime"],
    )


def shard_sizes_now():
    """Samples of the shard sets tiled so far (msgfm.cost falls back to cost.samples)."""
    from msgfm.cost import shard_sizes

    return shard_sizes(SHARDS)


def all_targets():
    """Everything the workflow builds: shard sets, the jobs msgfm.plan plans (encoders with
    their report summaries, finetuned cells), the tables and the figures that are on."""
    variants = plan.pretrain_variants(config)
    return (
        [SHARDS / "pretrain" / source for source in PRETRAIN_SOURCES]
        + [SHARDS / "downstream" / task for task in DOWNSTREAM_TASKS]
        + [PRETRAIN / variant / "encoder.pt" for variant in variants]
        + [PRETRAIN / variant / "summary.png" for variant in variants]
        + [cell_target(cell) for cell in sorted(plan.finetune_cells(config))]
        + [TABLES / f"{name}.md" for name in TABLE_NAMES]
        + figure_targets()
    )


# Finetuning (rules/finetune.smk).
def cell_target(cell):
    """A cell's (msgfm.plan.Cell) metrics.json."""
    return RESULTS / cell.job_dir / "metrics.json"


def table_targets():
    """The cells that feed the tables (msgfm.plan.table_cells)."""
    return [cell_target(cell) for cell in plan.table_cells(config)]


def wildcard_cell(wildcards):
    """The cell (msgfm.plan.Cell) a finetuning job's wildcards name."""
    return plan.Cell(
        wildcards.task,
        wildcards.init,
        wildcards.transfer,
        wildcards.fraction,
        int(wildcards.seed),
        wildcards.get("sensors", "all"),
    )


def finetune_inputs(wildcards):
    """The task's shard set, the encoder to start from and the training subset, if any."""
    inputs = plan.cell_inputs(config, wildcard_cell(wildcards))
    return {name: RESULTS / path for name, path in inputs.items()}


def finetune_job_config(wildcards):
    """The resolved config of one finetuning cell, as the job receives it (JSON).

    A function of the wildcards alone: Snakemake does not track params that take ``input``
    (snakemake/snakemake#3895), and a changed setting must rerun its cells.
    """
    job = plan.finetune_job(config, wildcard_cell(wildcards), RESULTS)
    return json.dumps(job, sort_keys=True)


# The store the jobs will write to, checked before anything is submitted (also under -n).
# Snakemake gives a Snakefile no executor while it parses (workflow.executor_plugin is set
# afterwards, and is the "dryrun" plugin under -n); --jobs (resource_settings.nodes) is what
# every cluster executor requires and a local run folds into --cores (a local run given both
# needs only --cores). A job's own Snakemake (remote_exec) skips it: its invocation checked.
if not workflow.remote_exec:
    check_cluster_store(
        resolve_tracking_uri(config["tracking_uri"], RESULTS),
        workflow.resource_settings.nodes,
        sqlite_allowed=config["tracking_sqlite_on_cluster"],
    )

# The workflow's MLflow parent run (Snakefile's onstart/onsuccess/onerror; msgfm.tracking).
WORKFLOW_RUN_ENV = "MSGFM_WORKFLOW_RUN_ID"


def _tracking_options():
    options = ["--results-root", str(RESULTS)]
    if config["tracking_uri"]:
        options += ["--tracking-uri", config["tracking_uri"]]
    return options


def start_workflow_run():
    """Create the MLflow store and experiments once, before jobs fan out (concurrent jobs
    creating a fresh SQLite schema or the same experiment race), and open this
    invocation's parent run. Jobs inherit its id through the environment (locally and through
    sbatch), which neither changes their params nor their config hash."""
    dag = workflow.dag
    targets = [str(path) for path in dag.targetfiles]
    targets += [rule.name for rule in dag.targetrules]
    command = ["python", "-m", "msgfm", "workflow-start", *_tracking_options()]
    command += ["--experiments", *plan.experiments(config)]
    command += ["--config-json", json.dumps(config)]
    command += ["--targets", *targets, "--command", " ".join(sys.argv)]
    started = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    os.environ[WORKFLOW_RUN_ENV] = started.stdout.split()[-1]


def finish_workflow_run(status, log):
    """Close the parent run with its status, the tables and Snakemake's log (``log``: the
    log file, or a list of them, as Snakemake hands handlers)."""
    run_id = os.environ.get(WORKFLOW_RUN_ENV)
    if run_id:
        logs = [log] if isinstance(log, (str, Path)) else list(log or [])
        artifacts = [str(TABLES)] + [str(path) for path in logs]
        subprocess.run(
            ["python", "-m", "msgfm", "workflow-finish", *_tracking_options()]
            + ["--run-id", run_id, "--status", status, "--artifacts", *artifacts],
            check=True,
        )


# Figures (rules/figures.smk).
def figure_targets():
    """The paper figures that are on (config figures)."""
    if not config["figures"]["fig4"]:
        return []
    return [FIGURES / "fig4.png", FIGURES / "fig4.csv"]


def fig4_targets():
    """Every cell of the fig4 grid, whether or not finetune.run names it: the figure needs them."""
    return [cell_target(cell) for cell in plan.grid_cells(config, "fig4")]


def fig4_row_options():
    """One --row=INIT=LABEL per pretraining row of Fig. 4, in the grid's order: "SAR only"
    for a variant restricted to SAR, "msGFM" (the paper's label) for others, else the init.
    """
    options = []
    for init in config["finetune"]["grids"]["fig4"]["inits"]:
        sensors = VARIANTS[init].get("sensors") if init in VARIANTS else None
        label = "msGFM" if init in VARIANTS else init
        if sensors:
            label = f"{'+'.join(s.upper() for s in sensors)} only"
        options.append(f"--row={init}={label}")
    return options
