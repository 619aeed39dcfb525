"""Optimiser groups, schedules, checkpoints and preemption signals."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from msgfm.train.checkpoint import (
    CheckpointError,
    ProcessLayout,
    TrainPosition,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from msgfm.train.optim import build_optimizer, build_scheduler, param_groups
from msgfm.train.preemption import PreemptionWatcher


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_sar = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.body = nn.Linear(8, 8)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(self.embed_sar(x)))

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "relative_position_bias_table"}


def groups_by_name(model: nn.Module, **kwargs: object) -> dict[str, tuple[float, float]]:
    names = {id(param): name for name, param in model.named_parameters()}
    out = {}
    for group in param_groups(model, weight_decay=0.05, **kwargs):
        for param in group["params"]:
            out[names[id(param)]] = (group["weight_decay"], group["lr_scale"])
    return out


def test_no_weight_decay_on_1d_parameters_and_the_models_list() -> None:
    groups = groups_by_name(Tiny())
    assert groups["body.weight"] == (0.05, 1.0)
    assert groups["embed_sar.weight"] == (0.05, 1.0)
    for name in (
        "body.bias",
        "norm.weight",
        "norm.bias",
        "mask_token",
        "relative_position_bias_table",
    ):
        assert groups[name][0] == 0.0, name


def test_lr_scale_by_longest_prefix_is_applied_by_the_scheduler() -> None:
    model = Tiny()
    groups = param_groups(model, weight_decay=0.05, lr_scale_by_prefix={"embed_sar.": 0.25})
    opt = build_optimizer(groups, lr=1e-4)
    sched = build_scheduler(
        opt, schedule="multistep", epochs=10, steps_per_epoch=5, warmup_epochs=0, warmup_lr=0.0
    )
    lrs = {round(g["lr_scale"], 3): g["lr"] for g in opt.param_groups}
    assert lrs[1.0] == pytest.approx(1e-4)
    assert lrs[0.25] == pytest.approx(0.25e-4)
    del sched


def test_warmup_starts_at_warmup_lr_and_multistep_decays() -> None:
    opt = build_optimizer(param_groups(Tiny(), weight_decay=0.05), lr=1e-4)
    sched = build_scheduler(
        opt,
        schedule="multistep",
        epochs=8,
        steps_per_epoch=10,
        warmup_epochs=2,
        warmup_lr=5e-7,
        milestones=[6],
    )
    lr = lambda: opt.param_groups[0]["lr"]  # noqa: E731
    assert lr() == pytest.approx(5e-7)
    sched.step_update(10)
    assert 5e-7 < lr() < 1e-4
    sched.step_update(20)
    assert lr() == pytest.approx(1e-4)
    sched.step_update(60)
    assert lr() == pytest.approx(1e-5)


def make_state() -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(param_groups(model, weight_decay=0.05), lr=1e-3)
    sched = build_scheduler(
        opt, schedule="cosine", epochs=3, steps_per_epoch=4, warmup_epochs=1, warmup_lr=1e-6
    )
    return model, opt, sched


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, sched: object, steps: range) -> None:
    for step in steps:
        loss = model(torch.randn(2, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step_update(step + 1)


ONE = ProcessLayout(1, {"train": 4})


def save(directory, model, opt, sched, position, config_hash, layout=ONE) -> None:
    save_checkpoint(
        directory, model=model, optimizer=opt, scheduler=sched, position=position,
        config_hash=config_hash, rng_states=[rng_state()] * layout.world_size, layout=layout,
    )  # fmt: skip


def load(directory, model, opt, sched, config_hash, layout=ONE, rank=0):
    return load_checkpoint(
        directory, model=model, optimizer=opt, scheduler=sched, config_hash=config_hash,
        layout=layout, rank=rank,
    )  # fmt: skip


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path) -> None:
    model, opt, sched = make_state()
    train_steps(model, opt, sched, range(6))
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = make_state()
    train_steps(model, opt, sched, range(3))
    save(tmp_path, model, opt, sched, TrainPosition(epoch=0, step=3, global_step=3), "abc")
    train_steps(model, opt, sched, range(3, 4))  # work after the checkpoint is lost

    model, opt, sched = make_state()
    position, _ = load(tmp_path, model, opt, sched, "abc")
    assert position == TrainPosition(epoch=0, step=3, global_step=3)
    train_steps(model, opt, sched, range(3, 6))
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_checkpoint_of_another_config_is_set_aside_not_resumed(tmp_path) -> None:
    model, opt, sched = make_state()
    two = ProcessLayout(2, {"train": 4})
    save(tmp_path, model, opt, sched, TrainPosition(step=2), "abc", two)
    # rank 1 starts afresh and leaves the file to rank 0, the only one that moves it
    assert load(tmp_path, model, opt, sched, "xyz", two, rank=1) is None
    assert (tmp_path / "last.pt").exists()
    assert load(tmp_path, model, opt, sched, "xyz", two, rank=0) is None
    assert not (tmp_path / "last.pt").exists()
    kept = torch.load(tmp_path / "superseded-abc.pt", weights_only=False)
    assert kept["position"]["step"] == 2
    assert kept["layout"] == {"world_size": 2, "per_rank_batch": {"train": 4},
                              "global_batch": {"train": 8}}  # fmt: skip


def test_resume_under_another_world_size_stops_naming_both(tmp_path) -> None:
    model, opt, sched = make_state()
    save(tmp_path, model, opt, sched, TrainPosition(step=2), "abc", ProcessLayout(8, {"rgb": 128}))
    sixteen = ProcessLayout(16, {"rgb": 128})
    with pytest.raises(CheckpointError, match=r"8 process\(es\).*1024.*this run has 16.*2048"):
        load(tmp_path, model, opt, sched, "abc", sixteen)
    assert (tmp_path / "last.pt").exists()  # nothing moved, nothing lost


def test_each_rank_resumes_its_own_random_state(tmp_path) -> None:
    model, opt, sched = make_state()
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng_state())
    save_checkpoint(
        tmp_path, model=model, optimizer=opt, scheduler=sched, position=TrainPosition(step=1),
        config_hash="abc", rng_states=states, layout=ProcessLayout(2, {"train": 4}),
    )  # fmt: skip
    draws = []
    for rank in (0, 1):
        load(tmp_path, model, opt, sched, "abc", ProcessLayout(2, {"train": 4}), rank=rank)
        draws.append(torch.rand(3))
    for seed, draw in zip((1, 2), draws, strict=True):
        torch.manual_seed(seed)
        assert torch.equal(draw, torch.rand(3))


def test_damaged_checkpoint_is_reported_with_its_path(tmp_path) -> None:
    model, opt, sched = make_state()
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        load(tmp_path, model, opt, sched, "a")


class Wider(Tiny):
    """Tiny with one more hidden unit: the same parameter names, other shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 9)


def wrong_contents(payload: dict, what: str) -> None:
    if what == "shapes":
        payload["model"] = Wider().state_dict()
    elif what == "no-model":
        del payload["model"]
    else:  # an optimizer over other parameter groups
        payload["optimizer"]["param_groups"] = payload["optimizer"]["param_groups"][:1]


@pytest.mark.parametrize(
    ("what", "named"),
    [("shapes", "body.weight"), ("no-model", "body.weight"), ("optimizer", "optimizer groups")],
)
def test_checkpoint_that_does_not_fit_the_model_stops_before_loading(tmp_path, what, named) -> None:
    """Right config hash, wrong contents (a file copied from another job, another msgfm
    version): one line naming the file and what does not fit, and the model left untouched."""
    model, opt, sched = make_state()
    save(tmp_path, model, opt, sched, TrainPosition(step=2), "abc")
    payload = torch.load(tmp_path / "last.pt", weights_only=False)
    wrong_contents(payload, what)
    torch.save(payload, tmp_path / "last.pt")
    model, opt, sched = make_state()
    train_steps(model, opt, sched, range(1))  # differs from the saved weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        load(tmp_path, model, opt, sched, "abc")
    message = str(raised.value)
    assert "\n" not in message and named in message
    assert str(tmp_path / "last.pt") in message and "move it away" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_temp_files_of_dead_writers_are_removed_at_resume(tmp_path) -> None:
    """A SIGKILL during ``torch.save`` leaves ``.last.pt.tmp-<pid>`` (no finally runs)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])  # another process still writing its file
    try:
        model, opt, sched = make_state()
        two = ProcessLayout(2, {"train": 4})
        save(tmp_path, model, opt, sched, TrainPosition(step=2), "abc", two)
        stale = tmp_path / f".last.pt.tmp-{dead.pid}"
        writing = tmp_path / f".last.pt.tmp-{alive.pid}"
        for path in (stale, writing):
            path.write_bytes(b"half a checkpoint")
        assert load(tmp_path, model, opt, sched, "abc", two, rank=1) is not None
        assert stale.exists()  # only rank 0 writes here, and only rank 0 cleans up
        assert load(tmp_path, model, opt, sched, "abc", two, rank=0) is not None
        assert not stale.exists() and writing.exists()
        assert load(tmp_path / "fresh", model, opt, sched, "abc") is None  # no folder yet
    finally:
        alive.kill()
        alive.wait()


def test_no_checkpoint_means_fresh_start(tmp_path) -> None:
    model, opt, sched = make_state()
    assert load(tmp_path, model, opt, sched, "a") is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGURG, signal.SIGUSR1])
def test_preemption_signals_are_recorded_not_fatal(sig: signal.Signals) -> None:
    # What was there before comes back: Python's defaults, or SIG_IGN for SIGINT when pytest
    # itself was started in the background by a non-interactive shell.
    before = signal.getsignal(sig)
    with PreemptionWatcher() as watcher:
        assert not watcher.triggered
        os.kill(os.getpid(), sig)
        assert watcher.triggered and watcher.received == sig
    assert signal.getsignal(sig) == before


def test_a_job_config_without_an_experiment_is_refused_by_name_before_any_work(tmp_path) -> None:
    from msgfm.errors import MsgfmError
    from msgfm.train.job import run_job

    def never(job: object) -> dict:
        raise AssertionError("the job ran")

    with pytest.raises(MsgfmError, match=r"no 'experiment'.*msgfm\.plan\.experiment"):
        run_job({"pretrain": {"device": "cpu"}}, tmp_path / "job", stage="pretrain", seed=0,
                train=never)  # fmt: skip
    assert not (tmp_path / "job").exists()


def _mean_over_two_ranks(rank: int, folder: str) -> None:
    import json

    import torch.distributed as dist

    from msgfm.train.distributed import DistContext, mean_over_ranks

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    metrics = {"loss": torch.tensor(float(rank + 1))}
    if rank == 1:  # only this rank's batch drew a cross-sensor pair
        metrics["l1/sen12ms/sar/cross"] = torch.tensor(4.0)
    mean = mean_over_ranks(metrics, DistContext(rank, rank, 2, torch.device("cpu")))
    dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(mean))


def test_ranks_logging_different_metrics_agree_instead_of_hanging(tmp_path) -> None:
    import json

    import torch.multiprocessing as mp

    mp.spawn(_mean_over_two_ranks, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in (0, 1):
        mean = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert mean == {"loss": 1.5, "l1/sen12ms/sar/cross": 4.0}
