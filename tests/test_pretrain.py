"""Pretraining jobs end to end on demo shards: outputs, exact resume, DDP equivalence."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from demo_jobs import demo_config, pretrain_job

from msgfm import plan
from msgfm.data.loader import to_tensor
from msgfm.data.shards import ShardSet, index_digest
from msgfm.data.statistics import role_statistics
from msgfm.model.factory import load_encoder
from msgfm.model.masking import MaskGenerator
from msgfm.pretrain.batches import (
    SampleDraws,
    SourceSpec,
    loss_weights,
    make_entries,
    sensor_lr_scales,
)
from msgfm.train.preemption import EXIT_REQUEUE

# One OpenMP thread per process: several processes spinning all cores' threads slow each
# other down by orders of magnitude on a 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def shards(pretrain_shards: Path) -> Path:
    return pretrain_shards


def job_config(shards: Path, results: Path, **pretrain: object) -> dict:
    """The demo's MoE + cross-sensor job (Table 6's full row), a few steps per epoch."""
    return pretrain_job(shards, results, **pretrain)


def run_job(
    config: dict, out: Path, *, launcher: list[str] | None = None, new_session: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:  # fmt: skip
    command = [*(launcher or [sys.executable, "-m", "msgfm"]), "pretrain"]
    command += ["--config-json", json.dumps(config), "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, env={**ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True,
        start_new_session=new_session,
    )  # fmt: skip


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)["model"]


def elsewhere(config: dict, results: Path) -> dict:
    """The same job writing under ``results``: where a job writes is not what it trains."""
    moved = json.loads(json.dumps(config))
    moved["results_root"] = str(results)
    return moved


@pytest.fixture(scope="module")
def one_process_reference(
    pretrain_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """:func:`job_config` run once, uninterrupted, in one process: what each interrupted and
    resumed run of it must equal bitwise."""
    root = tmp_path_factory.mktemp("one-process")
    config = job_config(pretrain_shards, root)
    out = root / "reference"
    assert run_job(config, out).wait(timeout=600) == 0, (root / "reference.log").read_text()
    return config, out


def test_a_job_writes_a_loadable_encoder_figures_metrics_and_an_mlflow_run(
    shards, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    # The config names a tracking server with its password; the environment's store wins
    # (msgfm.tracking.resolve_tracking_uri), and the password is recorded nowhere.
    config = {**job_config(shards, tmp_path), "tracking_uri": "http://bob:s3cret@mlflow.x:5000"}
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = run_job(config, out, env=store)
    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert 0.0 <= metrics["cross_rate/sen12ms/sar"] <= 1.0
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "mdas_dsm.png", "mdas_rgb.png", "rgb_rgb.png", "sen12ms_s2.png", "sen12ms_sar.png",
    ]  # fmt: skip
    backbone = load_encoder(out / "encoder.pt", ["s2", "sar"], stack=True)
    features = backbone(torch.randn(1, 15, 64, 64))
    assert features.shape == (1, backbone.num_features, 2, 2)
    # the stems standardise with the statistics of the shards they were trained on
    sar = ShardSet(shards / "sen12ms")
    mean, std = role_statistics([sar], "sar", to_tensor)
    assert torch.equal(backbone.stacked.input_mean[13:], mean)
    assert torch.equal(backbone.stacked.input_std[13:], std)
    assert float(mean.min()) > 0.2 and float(std.min()) > 0.01  # measured, not the identity
    rgb = load_encoder(out / "encoder.pt", ["rgb"]).embeds["rgb"]  # RGB sets + MDAS's RGB
    rgb_sets = [ShardSet(shards / name) for name in ("geopile", "millionaid", "mdas")]
    expected = role_statistics(rgb_sets, "rgb", to_tensor)
    assert torch.equal(rgb.input_mean, expected[0])

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("msgfm-table6").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["variant"] == "t6_moe_cross50" and runs[0].data.tags["moe"] == "True"
    # The ablation tags its finetuning runs carry too (the compare view lines both up by row).
    cell_tags = plan.init_tags(demo_config(), "t6_moe_cross50")
    assert cell_tags.items() <= runs[0].data.tags.items() and "teacher" not in runs[0].data.tags
    assert runs[0].data.tags["mlflow.source.name"] == "python -m msgfm pretrain"
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 8
    cost = client.get_metric_history(runs[0].info.run_id, "cost/device_hours")
    assert len(cost) == 1 and cost[0].value == pytest.approx(metrics["device_hours"])
    assert metrics["device_hours"] > 0
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"config.json", "metrics.json", "figures"} <= artifacts
    # the encoder is the run's model (a Table 6 variant: not registered), loaded unchanged
    (output,) = runs[0].outputs.model_outputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["MLFLOW_TRACKING_URI"])
    logged = mlflow.pyfunc.load_model(f"models:/{output.model_id}").unwrap_python_model()
    reference = load_encoder(out / "encoder.pt").state_dict()
    assert logged.encoder.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in logged.encoder.state_dict().items())
    assert not client.search_model_versions()
    names = {i.dataset.name: i.dataset.digest for i in runs[0].inputs.dataset_inputs}
    read = ("geopile", "millionaid", "sen12ms", "mdas")  # the demo's sources
    assert names == {name: index_digest(shards / name) for name in read}
    redacted = "http://***@mlflow.x:5000"
    assert runs[0].data.params["tracking_uri"] == json.dumps(redacted)
    assert json.loads((out / "config.json").read_text())["tracking_uri"] == redacted
    stored = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    assert not [blob for blob in stored if b"s3cret" in blob]


def test_a_job_honours_the_speed_switches_and_survives_a_failing_compile(
    shards, tmp_path, monkeypatch, caplog
):
    """compile forced on with torch.compile raising, activation checkpointing on every stage,
    amp fp16 (no effect on CPU): the job runs eager, logs why once, and trains the weights of
    a job without the switches (recomputed blocks give the same gradients)."""
    from msgfm.pretrain.loop import run_pretraining

    plain = tmp_path / "plain"
    run_pretraining(job_config(shards, tmp_path), plain)

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiler unavailable")

    monkeypatch.setattr(torch, "compile", refuse)
    switched = tmp_path / "switched"
    config = job_config(shards, tmp_path, compile=True, activation_checkpointing=True, amp="fp16")
    with caplog.at_level("WARNING", logger="msgfm.train.speed"):
        run_pretraining(config, switched)
    assert caplog.text.count("torch.compile failed, running eager: RuntimeError") == 1
    for name, tensor in weights(plain).items():
        torch.testing.assert_close(weights(switched)[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_resumes_to_bitwise_identical_weights(
    shards, tmp_path, sig, one_process_reference
):
    config, reference = one_process_reference
    config = elsewhere(config, tmp_path)

    interrupted = tmp_path / "interrupted"
    proc = run_job(config, interrupted)
    log = tmp_path / "interrupted.log"
    deadline = time.monotonic() + 300
    # Kill once training is under way (after the first logged step, at a varying point). A
    # SIGKILL writes nothing: it waits for the periodic checkpoint (step 3) to resume from,
    # which a fast machine would otherwise often not have reached.
    checkpoint = interrupted / "checkpoints" / "last.pt"

    def under_way() -> bool:
        if sig == signal.SIGKILL:
            return checkpoint.exists()
        return "step" in (log.read_text() if log.exists() else "")

    while not under_way() and proc.poll() is None:
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.05)
    time.sleep(float(torch.rand(1)) * 0.5)
    proc.send_signal(sig)
    code = proc.wait(timeout=300)
    if code == 0:
        pytest.skip("the job finished before the signal arrived (machine too fast to interrupt)")
    assert code == (EXIT_REQUEUE if sig == signal.SIGTERM else -signal.SIGKILL)
    assert not (interrupted / "encoder.pt").exists()
    # SIGTERM always leaves a checkpoint; SIGKILL one only past the first checkpoint_every steps
    checkpointed = (interrupted / "checkpoints" / "last.pt").is_file()
    assert checkpointed or sig == signal.SIGKILL
    # Where it reads and writes is not the job's identity: resumed from copied shards into
    # another results folder (another MLflow store), it continues from its checkpoint. The
    # SIGKILLed job resumes in place, where its run was left RUNNING with points logged past
    # the checkpoint, and a kill during torch.save would have left a partial file.
    moved = json.loads(json.dumps(config))
    if sig == signal.SIGTERM:
        moved["shards_root"] = str(shutil.copytree(shards, tmp_path / "shards-copy"))
        moved["results_root"] = str(tmp_path / "moved-results")
    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = interrupted / "checkpoints" / f".last.pt.tmp-{dead.pid}"
    partial.write_bytes(b"half a checkpoint")
    assert run_job(moved, interrupted).wait(timeout=600) == 0, log.read_text()[-3000:]
    assert ("resuming at epoch" in log.read_text()) == checkpointed
    assert not partial.exists()
    expected, resumed = weights(reference), weights(interrupted)
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    if sig == signal.SIGKILL:
        import mlflow

        from msgfm.tracking import read_run_id

        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        run = client.get_run(read_run_id(interrupted))
        assert run.info.status == "FINISHED"
        for key in run.data.metrics:  # each step once, though steps past 3 ran twice
            steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), key
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(point.step for point in loss) == list(range(1, 9))


def test_a_changed_config_restarts_and_keeps_the_old_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    first = job_config(shards, tmp_path, max_steps_per_epoch=2, checkpoint_every=100)
    assert run_job(first, out).wait(600) == 0
    changed = job_config(shards, tmp_path, max_steps_per_epoch=2, checkpoint_every=100, seed=1)
    assert run_job(changed, out).wait(timeout=600) == 0
    assert "starting afresh" in (tmp_path / "run.log").read_text()
    assert len(list((out / "checkpoints").glob("superseded-*.pt"))) == 1
    assert json.loads((out / "config.json").read_text())["pretrain"]["seed"] == 1


def launch(*layout: str) -> list[str]:
    """The launcher the training rules use (msgfm.train.launch), with a process layout."""
    return [sys.executable, "-m", "msgfm", "launch", *layout, "--"]


def halve_batches(config: dict, results: Path) -> dict:
    """The same global batch on two ranks, writing under ``results``."""
    halved = elsewhere(config, results)
    halved["world_size"] = 2
    for source in halved["pretrain"]["sources"].values():
        source["batch_size"] //= 2
    return halved


# One launcher starting two processes (torchrun), as a one-node job with two GPUs does.
TWO_PROCESSES = launch("--gpus-per-node", "2", "--grace", "120")


@pytest.fixture(scope="module")
def two_process_reference(
    pretrain_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """A two-rank job (:func:`job_config`'s global batch halved per rank, checkpoints only when
    stopped) run once, uninterrupted, by one launcher: what the same job stopped and resumed,
    or started as two one-process nodes, must equal bitwise."""
    root = tmp_path_factory.mktemp("two-processes")
    config = halve_batches(job_config(pretrain_shards, root, checkpoint_every=100), root)
    out = root / "reference"
    proc = run_job(config, out, launcher=TWO_PROCESSES)
    assert proc.wait(timeout=600) == 0, (root / "reference.log").read_text()[-3000:]
    return config, out


def listening_addresses(root: int) -> set[str]:
    """TCP addresses that ``root`` and its descendants listen on (empty without ``ss``)."""
    if not shutil.which("ss"):
        return set()
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree, grown = tree | children, bool(children)
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    return {line.split()[3] for line in lines if any(f"pid={pid}," in line for pid in tree)}


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_at_the_same_global_batch(shards, tmp_path):
    single_cfg = job_config(shards, tmp_path / "single-results", max_steps_per_epoch=3)
    single_cfg["variant"]["moe"] = False  # per-rank MoE routing differs by design
    ddp_cfg = halve_batches(single_cfg, tmp_path / "ddp-results")
    single = tmp_path / "single"
    assert run_job(single_cfg, single).wait(timeout=600) == 0
    ddp = tmp_path / "ddp"
    temp = tmp_path / "temp"  # the job's TMPDIR: the launcher leaves nothing in it
    temp.mkdir()
    proc = run_job(ddp_cfg, ddp, launcher=launch("--gpus-per-node", "2"), env={"TMPDIR": str(temp)})
    listening = set()
    while proc.poll() is None:  # one node: torchrun, its workers and gloo on loopback only
        listening |= listening_addresses(proc.pid)
        time.sleep(0.2)
    assert proc.wait(timeout=600) == 0, (tmp_path / "ddp.log").read_text()[-3000:]
    assert not list(temp.iterdir()), "torchrun's log folders are the launcher's to remove"
    if shutil.which("ss"):
        assert listening, "gloo's pairs listen somewhere"
        assert all(a.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")) for a in listening)
    one, two = weights(single), weights(ddp)
    changed = 0
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
        changed += int(not torch.equal(value, weights_at_init(name)))
    assert changed > 0


@pytest.mark.slow
def test_two_launchers_as_two_nodes_equal_one_launcher_with_two_processes(
    tmp_path, two_process_reference
):
    """The multi-node path (one torchrun per node meeting at a c10d store on the first node)
    trains exactly what one node with both processes trains. The two "nodes" run in a network
    namespace of their own, where the store and gloo can only listen on loopback."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a private network namespace")
    config, one_node = two_process_reference
    config = elsewhere(config, tmp_path)
    two_nodes = tmp_path / "two-nodes"
    node = launch("--nodes", "2", "--gpus-per-node", "1", "--rendezvous", "127.0.0.1:29555",
                  "--rdzv-id", "test")  # fmt: skip
    tasks = [
        shlex.join([*node, "pretrain", "--config-json", json.dumps(config), "--out",
                    str(two_nodes)]) + f" > {tmp_path}/node{rank}.log 2>&1"
        for rank in range(2)
    ]  # fmt: skip
    script = f"ip link set lo up && {{ {tasks[0]} & first=$!; {tasks[1]}; second=$?; }}"
    script += " && wait $first && exit $second"
    done = subprocess.run(
        ["unshare", "--net", "bash", "-c", script],
        env={**ENV, "GLOO_SOCKET_IFNAME": "lo"}, timeout=600,
    )  # fmt: skip
    logs = "".join((tmp_path / f"node{rank}.log").read_text()[-2000:] for rank in range(2))
    assert done.returncode == 0, logs
    expected, got = weights(one_node), weights(two_nodes)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_two_processes_stopped_by_a_signal_resume_to_bitwise_identical_weights(
    tmp_path, sig, two_process_reference
):
    """SLURM's warning reaches every process of the step (Ctrl-C: of the terminal's group):
    each rank checkpoints at the end of its step, the launcher exits 75, and the rerun
    continues every rank, its own MoE gate noise included, to the uninterrupted weights."""
    config, reference = two_process_reference
    config = elsewhere(config, tmp_path)
    two = TWO_PROCESSES
    interrupted = tmp_path / "interrupted"
    proc = run_job(config, interrupted, launcher=two, new_session=True)
    log = tmp_path / "interrupted.log"
    deadline = time.monotonic() + 300
    while " step 2/" not in (log.read_text() if log.exists() else "") and proc.poll() is None:
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=300) == EXIT_REQUEUE, log.read_text()[-3000:]
    assert not (interrupted / "encoder.pt").exists()
    assert run_job(config, interrupted, launcher=two).wait(timeout=600) == 0, log.read_text()
    resumed_at = re.findall(r"resuming at epoch (\d+) step (\d+)", log.read_text())
    assert resumed_at and resumed_at[0] != ("0", "0"), (
        "checkpoint_every is 100: the signal wrote it"
    )
    expected, resumed = weights(reference), weights(interrupted)
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name


_INIT: dict[str, torch.Tensor] = {}


def weights_at_init(name: str) -> torch.Tensor:
    """Parameters of the demo model before training (same seed as the jobs)."""
    if not _INIT:
        from msgfm.model.factory import build_model

        torch.manual_seed(0)
        _INIT.update(build_model({"preset": "demo", "moe": {"enabled": False}}).state_dict())
    return _INIT[name]


def test_entries_pair_sensors_draw_per_sample_and_weight_sources() -> None:
    draws = SampleDraws(MaskGenerator(64, 16, 4, 0.6), cross_rate=0.5, seed=0)
    batch = {
        "sen12ms": {
            "sar": torch.full((3, 2, 64, 64), -25.0),  # dB: normalised to 0
            "s2": torch.full((3, 13, 64, 64), 10000, dtype=torch.uint16),  # normalised to 1
            "row": torch.tensor([5, 1, 7]),
        },
        "rgb": {"rgb": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "row": torch.tensor([0, 3])},
    }
    specs = [SourceSpec("rgb", ("geopile",), 2, 1e-4), SourceSpec("sen12ms", ("s",), 3, 2.5e-5)]
    cpu = torch.device("cpu")
    weights = loss_weights(specs)
    entries, entry_weights = make_entries(draws.add_to(batch, 0), weights=weights, device=cpu)
    assert sorted(entries) == ["rgb/rgb", "sen12ms/s2", "sen12ms/sar"]
    assert entries["sen12ms/sar"]["partner_sensor"] == "s2"
    assert torch.equal(entries["sen12ms/sar"]["partner"], torch.ones(3, 13, 64, 64))
    assert torch.equal(entries["sen12ms/s2"]["image"], torch.ones(3, 13, 64, 64))
    assert torch.equal(entries["sen12ms/sar"]["image"], torch.zeros(3, 2, 64, 64))
    assert "partner" not in entries["rgb/rgb"]
    assert entry_weights == {"rgb/rgb": 1.0, "sen12ms/s2": 0.25, "sen12ms/sar": 0.25}
    # Independent masks per sensor, the same ones for the same sample in another batch layout.
    assert not torch.equal(entries["sen12ms/sar"]["mask"], entries["sen12ms/s2"]["mask"])
    reordered = {"sen12ms": {k: v[[2, 0, 1]] for k, v in batch["sen12ms"].items()}}
    again, _ = make_entries(draws.add_to(reordered, 0), weights=weights, device=cpu)
    assert torch.equal(again["sen12ms/sar"]["mask"], entries["sen12ms/sar"]["mask"][[2, 0, 1]])
    assert torch.equal(again["sen12ms/s2"]["cross"], entries["sen12ms/s2"]["cross"][[2, 0, 1]])
    other_epoch, _ = make_entries(draws.add_to(batch, 1), weights=weights, device=cpu)
    assert not torch.equal(other_epoch["sen12ms/sar"]["mask"], entries["sen12ms/sar"]["mask"])
    assert all(m.sum() == 10 * 16 for m in entries["rgb/rgb"]["mask"])  # ⌈16·0.6⌉ cells of 4²


def test_sensor_modules_train_at_their_sources_learning_rate() -> None:
    specs = [
        SourceSpec("rgb", ("geopile",), 128, 1e-4),
        SourceSpec("sen12ms", ("sen12ms",), 32, 2.5e-5),
        SourceSpec("mdas", ("mdas",), 12, 1e-5),
    ]
    sensors = {"rgb": ["rgb"], "sen12ms": ["sar", "s2"], "mdas": ["rgb", "dsm"]}
    scales = sensor_lr_scales(specs, sensors)
    assert scales["embeds.rgb."] == 1.0  # RGB serves GeoPile/MillionAID and MDAS
    assert scales["decoders.sar."] == scales["embeds.s2."] == pytest.approx(0.25)
    assert scales["embeds.dsm."] == pytest.approx(0.1)
