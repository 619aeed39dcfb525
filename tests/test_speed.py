"""The jobs' GPU switches (compile, fused_adamw, tf32, amp, activation_checkpointing): each is
honoured where it can be on a CPU, and ``auto`` changes nothing there."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from msgfm.model.factory import build_mask_generator, build_model
from msgfm.tracked_run import TrackedRun
from msgfm.train.distributed import DistContext
from msgfm.train.optim import build_optimization, build_scheduler, param_groups
from msgfm.train.precision import Precision, job_precision
from msgfm.train.runner import Trainer
from msgfm.train.speed import (
    EagerFallback,
    compile_model,
    prepare_model,
    set_activation_checkpointing,
    set_tf32,
    switch_on,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
OPTIM = {
    "betas": [0.9, 0.999], "eps": 1e-8, "schedule": "cosine", "warmup_epochs": 0,
    "warmup_lr": 1e-6, "min_lr": 0.0,
}  # fmt: skip


def test_auto_means_cuda_only_and_explicit_values_win() -> None:
    assert not switch_on("auto", CPU)
    assert switch_on("auto", CUDA)
    assert switch_on(True, CPU) and not switch_on(False, CUDA)
    with pytest.raises(ValueError, match="auto, true or false"):
        switch_on("yes", CPU)


def demo_loss(model: nn.Module) -> torch.Tensor:
    """The demo model's SimMIM + aux loss on a fixed S2 batch, with fixed gate noise."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 13, 64, 64, generator=generator)
    mask = build_mask_generator(model.config).batch(2, generator)
    torch.manual_seed(2)
    return model({"s2": {"image": image, "mask": mask}})[0]


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "demo"}).train()
    plain = demo_loss(model)
    plain.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    set_activation_checkpointing(model, True)
    calls = []
    model.encoder.stages[2].blocks[1].register_forward_pre_hook(lambda *args: calls.append(1))
    checkpointed = demo_loss(model)
    checkpointed.backward()
    assert len(calls) == 2  # the MoE block ran again in the backward pass
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_activation_checkpointing_per_stage_and_a_wrong_length_is_refused() -> None:
    model = build_model({"preset": "demo"})
    prepare_model({"activation_checkpointing": [False, False, True, False]}, CPU, model, model)
    assert [stage.grad_checkpointing for stage in model.encoder.stages] == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="one per stage"):
        set_activation_checkpointing(model, [True, False])


def test_compile_auto_on_cpu_leaves_the_model_eager() -> None:
    model = nn.Linear(2, 2)
    assert compile_model(model, "auto", CPU) is model


def test_a_failing_torch_compile_is_logged_and_the_job_runs_eager(monkeypatch, caplog) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no inductor here\nsecond line")

    monkeypatch.setattr(torch, "compile", refuse)
    model = nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="msgfm.train.speed"):
        assert compile_model(model, True, CPU) is model
    assert "torch.compile failed, running eager: RuntimeError: no inductor here" in caplog.text
    assert "second line" not in caplog.text


def test_a_compiled_call_that_raises_falls_back_to_eager_for_good(monkeypatch, caplog) -> None:
    calls = []

    def broken(*args: object) -> None:
        calls.append(args)
        raise RuntimeError("inductor: no C compiler")

    monkeypatch.setattr(torch, "compile", lambda module: broken)
    model = nn.Linear(2, 2)
    wrapped = compile_model(model, True, CPU)
    assert isinstance(wrapped, EagerFallback)
    assert list(wrapped.parameters()) == list(model.parameters())
    x = torch.randn(3, 2)
    with caplog.at_level(logging.WARNING, logger="msgfm.train.speed"):
        torch.testing.assert_close(wrapped(x), model(x))
        torch.testing.assert_close(wrapped(x), model(x))
    assert len(calls) == 1
    assert caplog.text.count("torch.compile failed") == 1


@pytest.fixture
def tf32_flags():
    """Restores the process-wide TF32 flags a test changes."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_auto_on_cpu_leaves_the_flags_and_true_sets_them(tf32_flags) -> None:
    assert not set_tf32("auto", CPU)
    assert not torch.backends.cuda.matmul.allow_tf32
    assert set_tf32(True, CPU)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize(("setting", "fused"), [("auto", None), (True, True), (False, None)])
def test_fused_adamw_follows_the_setting_and_auto_is_off_on_cpu(setting, fused) -> None:
    groups = param_groups(nn.Linear(2, 2), weight_decay=0.05)
    optimizer, _ = build_optimization(
        groups, {**OPTIM, "fused_adamw": setting}, lr=1e-3, epochs=1, steps_per_epoch=1
    )
    assert optimizer.defaults["fused"] is fused


def test_amp_has_no_effect_on_cpu_and_unknown_values_are_refused() -> None:
    for amp in ("bf16", "fp16", "none"):
        precision = job_precision(amp, CPU)
        assert precision.dtype is None and not precision.scaler.is_enabled()
    with pytest.raises(ValueError, match="amp 'fp8' unknown"):
        job_precision("fp8", CPU)


def test_fp16_autocast_and_grad_scaler_skip_an_overflowing_step() -> None:
    precision = Precision("cpu", torch.float16)
    model = nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with precision.autocast():
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.float16
    before = [p.detach().clone() for p in model.parameters()]
    scale = precision.scaler.get_scale()
    optimizer.zero_grad()
    precision.backward(out.float().sum() * 1e38)  # scaled to inf: the step must be skipped
    grad_norm = precision.clip_and_step(optimizer, model.parameters(), 5.0)
    assert not torch.isfinite(grad_norm)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert precision.scaler.get_scale() == scale / 2


def tiny_trainer(directory, precision: Precision) -> Trainer:
    """A Trainer around a linear model, enough for ``_optimise``, ``checkpoint`` and ``resume``."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracked = TrackedRun(
        uri="", experiment="", run_name="", state_dir=directory, results_root=directory,
        tags={}, params={}, config_hash="h", enabled=False,
    )  # fmt: skip
    return Trainer(
        model=model, train_model=model, optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, schedule="cosine", epochs=1, steps_per_epoch=8, warmup_epochs=0,
            warmup_lr=1e-6,
        ),
        loader=SimpleNamespace(batch_sampler=SimpleNamespace(batch_sizes={"train": 2})),
        ctx=DistContext(rank=0, local_rank=0, world_size=1, device=CPU), tracked=tracked,
        checkpoint_dir=directory, config_hash="h", epochs=1, steps_per_epoch=8, clip_grad=5.0,
        log_every=100, checkpoint_every=100, precision=precision,
    )  # fmt: skip


def fp16_step(trainer: Trainer, scale: float):
    def step(batch: torch.Tensor, position: object):
        with trainer.precision.autocast():
            out = trainer.train_model(batch)
        return out.float().square().mean() * scale, {}, len(batch)

    return step


def test_the_fp16_grad_scaler_is_checkpointed_and_resumed_exactly(tmp_path) -> None:
    batches = [torch.randn(2, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    straight = tiny_trainer(tmp_path / "a", Precision("cpu", torch.float16))
    straight._optimise(fp16_step(straight, 1e38), batches[0])  # overflow: scale halves
    straight._optimise(fp16_step(straight, 1.0), batches[1])
    straight.checkpoint()
    scaler_state = straight.precision.state_dict()
    assert scaler_state["scale"] == 2.0**15
    for batch in batches[2:]:
        straight._optimise(fp16_step(straight, 1.0), batch)

    resumed = tiny_trainer(tmp_path / "a", Precision("cpu", torch.float16))
    resumed.resume()
    assert resumed.precision.state_dict() == scaler_state
    for batch in batches[2:]:
        resumed._optimise(fp16_step(resumed, 1.0), batch)
    for got, want in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(got, want)
