"""``python -m msgfm <verb>``: the one entry point every Snakemake rule calls.

Each verb parses its arguments and hands over to one library function, importing it only
then: a tiling job should not pay for importing torch, a download job not for rasterio.
Errors raised on purpose (:class:`msgfm.errors.MsgfmError`) are printed as one clear line
and exit with status 1 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from msgfm.errors import MsgfmError, OptionError
from msgfm.redaction import RedactingFilter, print_redacted_traceback, redact_text
from msgfm.train.resources import rank_threads

Handler = Callable[[argparse.Namespace], object]


class ExitStatus(int):
    """A verb's result that is the process's exit status (``launch``: its job's)."""


def _make_demo(args: argparse.Namespace) -> object:
    from msgfm.data.demo import write_demo

    return write_demo(args.data_root, seed=args.seed, datasets=args.datasets)


def _prepare(args: argparse.Namespace) -> object:
    from msgfm.data.download import prepare

    return prepare(args.dataset, args.data_root, mirror=args.mirror)


def _tile_pretrain(args: argparse.Namespace) -> object:
    from msgfm.data.tiling.pretrain import tile_pretrain

    return tile_pretrain(
        args.source,
        args.data_root,
        args.out,
        tile=args.tile,
        mdas_resize=args.mdas_resize,
        mdas_window=args.mdas_window,
        rows_per_shard=args.rows_per_shard,
    )


def _tile_downstream(args: argparse.Namespace) -> object:
    from msgfm.data.tiling.downstream import tile_downstream

    # The task's tiler checks the keys and values (msgfm.data.registry), as the pretraining
    # job checks its config.
    try:
        options = json.loads(args.options_json)
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise OptionError(f"--options-json: expected a JSON object, got {args.options_json!r}")
    return tile_downstream(
        args.task, args.data_root, args.out, rows_per_shard=args.rows_per_shard, **options
    )


def _prepare_training_process() -> None:
    """Before a training job opens its shards and builds its model: as many open files as the
    node allows (msgfm.data.shards keeps maps open), and on CPU let glibc reuse freed gradient
    blocks."""
    import torch

    from msgfm.train.memory import retain_freed_cpu_memory
    from msgfm.train.resources import raise_open_file_limit

    raise_open_file_limit()
    if not torch.cuda.is_available():
        retain_freed_cpu_memory()


def _pretrain(args: argparse.Namespace) -> object:
    from msgfm.pretrain.loop import run_pretraining

    _prepare_training_process()

    return run_pretraining(json.loads(args.config_json), args.out)


def _launch(args: argparse.Namespace) -> object:
    from msgfm.train.launch import launch

    return ExitStatus(launch(args))


def _pretrain_summary(args: argparse.Namespace) -> object:
    from msgfm.pretrain.summary import write_summary

    return write_summary(args.job_dir, args.out, args.results_root, args.tracking_uri)


def _finetune(args: argparse.Namespace) -> object:
    from msgfm.finetune.loop import run_finetuning

    _prepare_training_process()

    return run_finetuning(json.loads(args.config_json), args.out)


def _finetune_subset(args: argparse.Namespace) -> object:
    from msgfm.finetune.subsets import write_subset

    return write_subset(args.shards, args.out, args.fraction, args.seed)


def _workflow_start(args: argparse.Namespace) -> object:
    from msgfm.tracking import resolve_tracking_uri, start_workflow_run

    uri = resolve_tracking_uri(args.tracking_uri, args.results_root)
    args.results_root.mkdir(parents=True, exist_ok=True)
    return start_workflow_run(
        uri, args.results_root, args.experiments, config=json.loads(args.config_json),
        targets=args.targets, command=args.command,
    )  # fmt: skip


def _workflow_finish(args: argparse.Namespace) -> object:
    from msgfm.tracking import finish_workflow_run, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, args.results_root)
    return finish_workflow_run(uri, args.run_id, args.status, args.artifacts)


def _tables(args: argparse.Namespace) -> object:
    from msgfm.tables.aggregate import write_tables
    from msgfm.tracking import resolve_tracking_uri

    tracking = None
    if args.results_root:
        tracking = (resolve_tracking_uri(args.tracking_uri, args.results_root), args.results_root)
    written = write_tables(
        args.results, args.finetune_root, args.out, transfer=args.transfer,
        pretrain_root=args.pretrain_root, tracking=tracking,
    )  # fmt: skip
    return "\n\n".join(path.read_text() for path in written.values())


def _fig4(args: argparse.Namespace) -> object:
    from msgfm.tables.fig4 import write_fig4

    summary = write_fig4(args.results, args.row, args.png, args.csv)
    return summary.to_markdown(index=False)


def _estimate_cost(args: argparse.Namespace) -> object:
    from msgfm.config_files import load_config
    from msgfm.cost import estimate, measured_throughput, shard_sizes
    from msgfm.plan import experiments
    from msgfm.tracking import resolve_tracking_uri

    config = load_config(args.configfile)
    results = Path(config["results_root"])
    throughput = {}
    if args.measured:
        uri = resolve_tracking_uri(config["tracking_uri"], results)
        throughput = measured_throughput(uri, experiments(config))
    jobs, per_table = estimate(config, shard_sizes(results / "shards"), throughput)
    if args.out:
        jobs.to_csv(args.out, index=False)
    return f"GPU-hours by table and stage:\n{per_table.round(3).to_markdown()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgfm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPUs of the whole job, shared evenly by torchrun's LOCAL_WORLD_SIZE ranks as "
        "torch/OpenMP threads, with at most one DataLoader worker fewer per rank (Snakemake "
        "passes the rule's threads: two jobs that each spin all cores' OpenMP threads slow "
        "each other down by orders of magnitude). Default: OMP_NUM_THREADS per process if "
        "set, else the CPUs this process may run on",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = verb("make-demo", _make_demo, "write the demo datasets in their real layouts")
    demo.add_argument("--data-root", type=Path, required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--datasets", nargs="*", default=None, help="default: all eight")

    prep = verb("prepare", _prepare, "download and extract a dataset, or check a manual one")
    prep.add_argument("dataset")
    prep.add_argument("--data-root", type=Path, required=True)
    prep.add_argument("--mirror", default=None, help="base URL replacing the public hosts")

    pre = verb("tile-pretrain", _tile_pretrain, "tile a GeoPile-2 source into shards")
    pre.add_argument("source")
    pre.add_argument("--data-root", type=Path, required=True)
    pre.add_argument("--out", type=Path, required=True)
    pre.add_argument("--tile", type=int, default=192)
    pre.add_argument("--mdas-resize", type=int, default=384)
    pre.add_argument("--mdas-window", type=int, default=None)
    pre.add_argument("--rows-per-shard", type=int, default=1024)

    down = verb("tile-downstream", _tile_downstream, "tile a downstream dataset into shards")
    down.add_argument("task")
    down.add_argument("--data-root", type=Path, required=True)
    down.add_argument("--out", type=Path, required=True)
    down.add_argument(
        "--options-json",
        default="{}",
        help="the task's tiler options over their defaults (msgfm.data.registry), e.g. "
        '\'{"crop": 512, "stride": 256}\' for vaihingen, \'{"mul_size": 162}\' for spacenet2',
    )
    down.add_argument("--rows-per-shard", type=int, default=1024)
    launcher = verb(
        "launch",
        _launch,
        "start a training verb's processes: one per GPU of N nodes, through torchrun (and srun "
        "under SLURM); exits 75 after a preemption signal (msgfm.train.launch)",
    )
    from msgfm.train.launch import add_arguments

    add_arguments(launcher)
    train = verb("pretrain", _pretrain, "pretrain one msGFM variant (resumes from its checkpoint)")
    train.add_argument("--config-json", required=True, help="the variant's resolved config")
    train.add_argument("--out", type=Path, required=True)
    summary = verb(
        "pretrain-summary", _pretrain_summary, "training curves + reconstructions of one variant"
    )
    summary.add_argument("--job-dir", type=Path, required=True, help="the pretraining job's --out")
    summary.add_argument("--out", type=Path, required=True, help="the summary PNG")
    summary.add_argument("--results-root", type=Path, required=True)
    summary.add_argument("--tracking-uri", default=None)
    tune = verb("finetune", _finetune, "finetune one table cell (resumes from its checkpoint)")
    tune.add_argument("--config-json", required=True, help="the cell's resolved config")
    tune.add_argument("--out", type=Path, required=True)
    subset = verb("finetune-subset", _finetune_subset, "draw a seeded training subset file")
    subset.add_argument("--shards", type=Path, required=True, help="the task's shard set")
    subset.add_argument("--out", type=Path, required=True)
    subset.add_argument("--fraction", type=float, required=True, help="share of train, (0, 1]")
    subset.add_argument("--seed", type=int, required=True)
    track = verb(
        "workflow-start",
        _workflow_start,
        "create the MLflow store and experiments once, open the invocation's parent run and "
        "print its id (the workflow's onstart)",
    )
    track.add_argument("--results-root", type=Path, required=True)
    track.add_argument("--experiments", nargs="+", required=True)
    track.add_argument("--tracking-uri", default=None)
    track.add_argument("--config-json", required=True, help="the workflow's config")
    track.add_argument("--targets", nargs="*", default=[], help="the invocation's targets")
    track.add_argument("--command", default="", help="the invocation's command line")
    finish = verb("workflow-finish", _workflow_finish, "close the parent run (onsuccess/onerror)")
    finish.add_argument("--results-root", type=Path, required=True)
    finish.add_argument("--tracking-uri", default=None)
    finish.add_argument("--run-id", required=True)
    finish.add_argument("--status", choices=["FINISHED", "FAILED"], required=True)
    finish.add_argument("--artifacts", nargs="*", type=Path, default=[], help="files, folders")
    tables = verb("tables", _tables, "aggregate finetuning results into Tables 3, 5 and 6")
    tables.add_argument("results", nargs="*", type=Path, help="finetuning metrics.json files")
    tables.add_argument("--finetune-root", type=Path, required=True)
    tables.add_argument("--out", type=Path, required=True)
    tables.add_argument("--transfer", default="stacked", choices=["stacked", "shared"])
    tables.add_argument("--pretrain-root", type=Path, default=None, help="adds encoders' cost")
    tables.add_argument(
        "--results-root", type=Path, default=None, help="log the tables to MLflow (its store)"
    )
    tables.add_argument("--tracking-uri", default=None)
    fig4 = verb("fig4", _fig4, "paper Fig. 4: single- vs multi-sensor pretraining")
    fig4.add_argument("results", nargs="+", type=Path, help="finetuning metrics.json files")
    fig4.add_argument(
        "--row", action="append", required=True, help="INIT=LABEL, once per pretraining row"
    )
    fig4.add_argument("--png", type=Path, required=True)
    fig4.add_argument("--csv", type=Path, required=True)
    cost = verb("estimate-cost", _estimate_cost, "GPU-hours of each table before launch")
    cost.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")])
    cost.add_argument("--measured", action="store_true", help="throughput from finished jobs")
    cost.add_argument("--out", type=Path, default=None, help="CSV with one line per job")
    return parser


def configure_logging(verbose: bool) -> None:
    """Log lines (and a crash's traceback) to stderr, every URL in them redacted: job logs are
    kept and shared, and a mirror's or tracking server's URL may carry a password or token
    (msgfm.redaction)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    sys.excepthook = print_redacted_traceback  # and the traceback of a crash


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = rank_threads(args.threads)
    if threads is not None:
        # Before torch is imported (the verbs import it lazily), so OpenMP picks it up.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # main() called from Python that already has torch
            sys.modules["torch"].set_num_threads(threads)
    configure_logging(args.verbose)
    from msgfm.train.preemption import EXIT_REQUEUE, Preempted

    try:
        result = args.handler(args)
    except Preempted as exc:
        print(f"msgfm {args.verb}: {exc}; run it again to resume", file=sys.stderr)
        return EXIT_REQUEUE
    except MsgfmError as exc:
        print(f"msgfm {args.verb}: error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    if isinstance(result, ExitStatus):
        return int(result)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    elif result is not None:
        print(result)
    return 0
