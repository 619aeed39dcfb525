"""A pretraining step that does not log reads nothing back from the device (issue #10).

:class:`HostSyncCounter` counts the ops that make the host wait for the device; these tests
hold the model's forward, loss and backward, and the trainer's non-logging step, to zero.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from host_sync import OPTIMIZER_STEP_COUNT, HostSyncCounter
from torch import nn

from msgfm.model.factory import build_model
from msgfm.model.masking import MaskGenerator, pixel_mask
from msgfm.model.msgfm import L1_EPS, MsGFM, masked_l1_terms, patchify
from msgfm.pretrain.batches import SampleDraws, make_entries
from msgfm.train.checkpoint import TrainPosition
from msgfm.train.distributed import DistContext
from msgfm.train.optim import build_optimizer, build_scheduler, param_groups
from msgfm.train.runner import StepFn, Trainer

DENSE = {"preset": "demo", "moe": {"enabled": False}}
# The MoE layer's sync-free dispatch, which a GPU and torch.compile use (model.moe.dispatch auto)
MOE = {"preset": "demo", "moe": {"enabled": True, "dispatch": "capacity"}}
# The CPU-eager dispatch (grouped kernels sized on the host)
MOE_GROUPED = {"preset": "demo", "moe": {"enabled": True, "dispatch": "grouped"}}


def heterogeneous_batch(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A demo step as the DataLoader delivers it: raw tiles as stored plus each sample's draws
    (a SAR/S2 pair with mixed cross flags and RGB alone)."""
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "sen12ms": {
            "sar": torch.rand(4, 2, 64, 64, generator=generator) * -30.0,  # dB
            "s2": torch.randint(0, 12000, (4, 13, 64, 64), generator=generator).to(torch.uint16),
            "row": torch.tensor([5, 1, 7, 2]),
        },
        "rgb": {
            "rgb": torch.randint(0, 256, (2, 3, 64, 64), generator=generator, dtype=torch.uint8),
            "row": torch.tensor([0, 3]),
        },
    }
    return SampleDraws(MaskGenerator(64, 16, 4, 0.6), cross_rate=0.5, seed=seed).add_to(batch, 0)


def heterogeneous_entries(seed: int = 0) -> tuple[dict, dict[str, float]]:
    entries, weights = make_entries(
        heterogeneous_batch(seed), weights={"sen12ms": 0.25, "rgb": 1.0}, device=torch.device("cpu")
    )
    crosses = torch.cat([e["cross"] for e in entries.values() if "cross" in e])
    assert crosses.any() and not crosses.all(), "the batch must mix self and cross samples"
    return entries, weights


def boolean_selection_loss(model: MsGFM, entries: dict, weights: dict[str, float]) -> torch.Tensor:
    """The loss as it was computed before issue #10: each group decodes only the final tokens
    it selects by boolean indexing (data-dependent shapes). The reference for the new one."""
    total = model.mask_token.new_zeros(())
    for key, entry in entries.items():
        sensor, image, mask = entry["sensor"], entry["image"], entry["mask"]
        features = model.encoder.forward_features(model.embed(image, sensor, mask))
        stride = image.shape[-1] // features.shape[-1]
        masks = patchify(pixel_mask(mask, image.shape[-1] // mask.shape[-1]), stride)
        cross = entry.get("cross", torch.zeros(len(image), dtype=torch.bool))
        groups = [(~cross, sensor, model.embeds[sensor].standardize(image))]
        if cross.any():
            partner = model.embeds[entry["partner_sensor"]].standardize(entry["partner"])
            groups.append((cross, entry["partner_sensor"], partner))
        needed = masks.flatten(3).amax(dim=3) > 0
        tokens = features.permute(0, 2, 3, 1)
        numerator = denominator = 0.0
        for selected, target_sensor, target in groups:
            chosen = needed & selected[:, None, None]
            pred = model.decoders[target_sensor].forward_tokens(tokens[chosen])
            num, den = masked_l1_terms(pred, patchify(target, stride)[chosen], masks[chosen])
            numerator, denominator = numerator + num, denominator + den
        total = total + weights[key] * numerator / (denominator + L1_EPS)
    return total


def forward_loss_backward(model: nn.Module, entries: dict, weights: dict[str, float]):
    """One training step's device work without the optimiser: loss, metrics, gradients."""
    loss, parts = model(entries, weights)
    loss.backward()
    return loss, parts


def test_counter_sees_item_boolean_indexing_nonzero_and_tensor_truth() -> None:
    values = torch.arange(6.0)
    with HostSyncCounter() as counter:
        values.sum().item()
        values[values > 2]
        values.nonzero()
        bool(values.any())
        values[torch.tensor([0, 2])]  # integer indices have a static shape: not a sync
        values * (values > 2)
    assert counter.total == 4, counter.calls


def test_weighted_loss_equals_the_boolean_selection_it_replaces() -> None:
    torch.manual_seed(0)
    model = build_model(DENSE)
    entries, weights = heterogeneous_entries()
    loss, parts = model(entries, weights)
    with torch.no_grad():
        expected = boolean_selection_loss(model, entries, weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"l1/sen12ms/s2/self", "l1/sen12ms/s2/cross", "l1/rgb/rgb"} <= set(parts)


def with_teacher_targets(entries: dict, objective: str, dim: int = 8) -> dict:
    """Random stand-ins for a Table 5 teacher's targets (the teachers are tested elsewhere)."""
    for entry in entries.values():
        batch = len(entry["image"])
        if objective == "distill":
            entry["teacher"] = torch.randn(batch, dim)
        elif objective == "feature_recon":
            entry["teacher_cells"] = torch.randn(batch, dim, 4, 4)  # 16 px mask cells
            if "partner" in entry:
                entry["partner_teacher_cells"] = torch.randn(batch, dim, 4, 4)
    return entries


@pytest.mark.parametrize("objective", ["mim", "distill", "feature_recon"])
def test_dense_forward_loss_and_backward_never_sync(objective: str) -> None:
    torch.manual_seed(0)
    extra = {} if objective == "mim" else {objective: {"dim": 8}}
    model = build_model({**DENSE, **extra})
    entries, weights = heterogeneous_entries()
    with_teacher_targets(entries, objective)
    with HostSyncCounter() as counter:
        forward_loss_backward(model, entries, weights)
    assert counter.total == 0, counter.calls


def test_the_cpu_moe_dispatch_syncs_only_inside_the_moe_layer() -> None:
    torch.manual_seed(0)
    model = build_model(MOE_GROUPED)
    entries, weights = heterogeneous_entries()
    with HostSyncCounter() as counter:
        forward_loss_backward(model, entries, weights)
    files = {site.split(":")[0] for site in counter.sites}
    # "?": reads in the backward pass, which runs in autograd's engine with no msgfm frame
    # (the dense model's backward reads nothing: test_dense_forward_loss_and_backward_never_sync)
    assert counter.total > 0 and files <= {"moe.py", "moe_gate.py", "?"}, counter.sites


def test_moe_forward_loss_and_backward_never_sync() -> None:
    torch.manual_seed(0)
    model = build_model(MOE)
    entries, weights = heterogeneous_entries()
    with HostSyncCounter() as counter:
        forward_loss_backward(model, entries, weights)
    assert counter.total == 0, counter.sites


class FakeSampler:
    """What the trainer asks of a batch sampler: epochs, resumption, per-source sizes."""

    def __init__(self) -> None:
        self.batch_sizes = {"demo": 6}

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        del epoch, start_step


class FakeDataset:
    def set_epoch(self, epoch: int) -> None:
        del epoch


class FakeLoader:
    """``steps`` copies of one batch, as a DataLoader with the trainer's sampler would give."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.batch_sampler, self.dataset = FakeSampler(), FakeDataset()

    def __iter__(self):
        return iter([None] * self.steps)


class NoTracking:
    """A TrackedRun that keeps nothing (the MLflow side is tested elsewhere)."""

    def log_metrics(self, metrics: dict, step: int) -> None:
        del metrics, step

    def flush(self) -> None: ...

    def finish(self, status: str = "FINISHED") -> None:
        del status


def pretraining_trainer(tmp_path: Path, steps: int, log_every: int) -> tuple[Trainer, StepFn]:
    """One epoch of the dense demo model on a heterogeneous batch; stop checks and
    checkpoints only at the epoch's end."""
    torch.manual_seed(0)
    model = build_model(DENSE)
    optimizer = build_optimizer(param_groups(model, weight_decay=0.05), lr=1e-4)
    scheduler = build_scheduler(
        optimizer, schedule="cosine", epochs=1, steps_per_epoch=steps, warmup_epochs=0,
        warmup_lr=1e-6,
    )  # fmt: skip
    trainer = Trainer(
        model=model, train_model=model, optimizer=optimizer, scheduler=scheduler,
        loader=FakeLoader(steps), ctx=DistContext(0, 0, 1, torch.device("cpu")),
        tracked=NoTracking(), checkpoint_dir=tmp_path / "checkpoints", config_hash="test",
        epochs=1, steps_per_epoch=steps, clip_grad=5.0, log_every=log_every,
        checkpoint_every=10_000, preempt_check_every=10_000,
    )  # fmt: skip
    entries, weights = heterogeneous_entries()

    def step(batch: None, position: TrainPosition) -> tuple[torch.Tensor, dict, int]:
        del batch, position
        loss, parts = model(entries, weights)
        return loss, parts, 6

    return trainer, step


def syncs_of_a_run(tmp_path: Path, steps: int, log_every: int) -> int:
    trainer, step = pretraining_trainer(tmp_path / str(steps), steps, log_every)
    with HostSyncCounter(ignored=[OPTIMIZER_STEP_COUNT]) as counter:
        trainer.run(step)
    return counter.total


def test_a_training_step_that_does_not_log_never_syncs(tmp_path: Path) -> None:
    # One logging step (the last) in both runs: four more steps that do not log add nothing.
    at_the_end = syncs_of_a_run(tmp_path, steps=2, log_every=10_000)
    assert at_the_end > 0  # the logging step reads the loss, metrics and grad norm
    assert syncs_of_a_run(tmp_path, steps=6, log_every=10_000) == at_the_end
    # The counter sees every logging step's reads: it would see a per-step loss.item() too.
    assert syncs_of_a_run(tmp_path, steps=6, log_every=1) == 6 * at_the_end


def test_a_nonfinite_loss_is_reported_at_the_next_check_with_its_steps(tmp_path: Path) -> None:
    trainer, step = pretraining_trainer(tmp_path, steps=6, log_every=4)

    def nan_at_step_1(batch: None, position: TrainPosition) -> tuple[torch.Tensor, dict, int]:
        loss, parts, samples = step(batch, position)
        return (loss * torch.nan if position.step == 1 else loss), parts, samples

    with pytest.raises(FloatingPointError, match="from epoch 0 step 0 to epoch 0 step 3"):
        trainer.run(nan_at_step_1)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def compiled_matches_eager(config: dict, backend: str) -> None:
    """torch.compile(fullgraph=True) of forward + loss + backward: no graph break, and the
    loss and gradients of eager mode within float tolerance."""
    torch.manual_seed(0)
    model = build_model(config)
    entries, weights = heterogeneous_entries()
    torch.manual_seed(1)  # the same MoE gate noise in both runs
    eager_loss, _ = forward_loss_backward(model, entries, weights)
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.manual_seed(1)
    loss, _ = forward_loss_backward(compiled, entries, weights)
    assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


# aot_eager traces forward and backward through AOTAutograd as inductor does (fullgraph is
# dynamo's verdict, the same for both) without compiling C++: seconds instead of minutes.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_the_dense_step_compiles_as_one_graph_and_matches_eager(backend: str) -> None:
    compiled_matches_eager(DENSE, backend)


def test_the_moe_step_compiles_as_one_graph_and_matches_eager() -> None:
    compiled_matches_eager(MOE, "aot_eager")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_entries_on_the_gpu_equal_those_on_the_cpu() -> None:
    """Raw tiles, masks and cross flags go through pinned memory, asynchronously, and are
    normalised on the GPU: the entries the CPU builds from the same batch."""
    batch = heterogeneous_batch()
    pinned = {s: {r: t.pin_memory() for r, t in roles.items()} for s, roles in batch.items()}
    weights = {"sen12ms": 0.25, "rgb": 1.0}
    on_cpu, _ = make_entries(batch, weights=weights, device=torch.device("cpu"))
    on_gpu, _ = make_entries(pinned, weights=weights, device=torch.device("cuda"))
    for key, entry in on_cpu.items():
        for name in ("image", "mask", "partner", "cross"):
            if name in entry:
                assert on_gpu[key][name].device.type == "cuda"
                torch.testing.assert_close(on_gpu[key][name].cpu(), entry[name], msg=(key, name))
