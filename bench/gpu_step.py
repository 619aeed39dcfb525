"""The msGFM pretraining step on a GPU: ms/step, samples/s, peak memory, TFLOP/s, MFU, vs timm.

What is timed is the step of msgfm/pretrain/loop.py on synthetic data: the paper's per-GPU
batch (config/config.yaml ``pretrain.sources``, Table 10: 128 RGB images, 32 SEN12MS S2+SAR
pairs, 12 MDAS RGB+DSM pairs at 192 px), turned into heterogeneous entries by
``make_entries`` (tiles as stored, uint8/uint16, with each sample's SimMIM masks and
cross-sensor draws at rate 0.5 as the DataLoader workers deliver them, pinned; copied to the
device and normalised there), the real model (``build_model`` from the config's ``model``,
MoE on; all 216 images in one trunk pass), its masked L1 + MoE aux loss under the job's
autocast (bf16), backward, gradient clipping and AdamW, with the job's switches
(msgfm/train/speed.py: tf32, fused AdamW, torch.compile; ``amp``).

The baseline is timm's dense Swin-B (``SwinTransformer`` at the model's arguments: timm ships
no window-6/192 preset) doing the same optimiser step on as many 3-band images as our step
feeds the encoder (216: each image of a pair is an encoder input), its loss the mean of its
final features. That is "just the encoder + a cheap loss", our choice: the ratio then charges
msGFM with everything it adds to a dense Swin-B step (stems, mask token, MoE, pixel decoders,
the masked L1 and the entry building), and compiles like ours when ours compiles.
Repetitions interleave the two steps so that clocks and other load hit both alike; the ratio
is the median of per-repetition ratios. FLOPs come from ``FlopCounterMode`` over one eager
step (forward + backward; the MoE counts the expert matmuls it really runs), TFLOP/s divide
them by the median step time, and MFU compares that with the device's dense bf16 peak.

``--nproc N`` re-launches this script under ``torch.distributed.run`` with N processes (DDP:
NCCL on CUDA, gloo on CPU); every number is per GPU except the total samples/s. The LAST line
is the ratio of our samples/s to timm's.

    python bench/gpu_step.py                                     # one GPU, the paper's batch
    python bench/gpu_step.py --nproc 8                           # a node, DDP
    OMP_NUM_THREADS=1 python bench/gpu_step.py --preset demo --steps 2 --warmup 1   # CPU
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msgfm.model.factory import build_mask_generator, build_model
from msgfm.pretrain.batches import SampleDraws, loss_weights, make_entries
from msgfm.pretrain.loop import source_specs
from msgfm.train.distributed import DistContext, cleanup_distributed, init_distributed
from msgfm.train.optim import build_optimizer, param_groups
from msgfm.train.precision import Precision, job_precision
from msgfm.train.runner import wrap_ddp
from msgfm.train.speed import compile_model, set_tf32, switch_on

ROOT = Path(__file__).resolve().parents[1]
CROSS_RATE = 0.5
SOURCE_ROLES = {"rgb": ("rgb",), "sen12ms": ("s2", "sar"), "mdas": ("rgb", "dsm")}
# Dense bf16 tensor-core peaks (fp16 for the V100, which has no bf16), TFLOP/s; "H100" alone is
# the SXM part (its name says "HBM3"), the PCIe card names itself.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("V100", 125.0),
    ("L40S", 362.0),
)
Step = Callable[[], int]


def load_settings(preset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, pretrain settings) of config/config.yaml, with config/demo.yaml's on top
    for the demo preset."""
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    model, pretrain = dict(cfg["model"]), dict(cfg["pretrain"])
    if preset == "demo":
        demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
        model.update(demo["model"])
        pretrain.update(demo["pretrain"])
    return model, pretrain


def raw_tiles(sensor: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Synthetic tiles in the dtype and range the shards store (uint8 RGB, uint16 S2, dB SAR)."""
    if sensor == "rgb":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    if sensor == "s2":
        return torch.randint(0, 10000, shape, generator=generator).to(torch.uint16)
    if sensor == "sar":
        return torch.rand(shape, generator=generator) * -25.0
    return torch.rand(shape, generator=generator) * 50.0 + 100.0  # DSM heights, metres


def synthetic_batches(
    batch_sizes: Mapping[str, int],
    sensors: Mapping[str, int],
    img: int,
    draws: SampleDraws,
    pin: bool,
    count: int = 4,
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """``count`` steps' raw batches as the loader delivers them: tiles as stored, each sample's
    row and draws (masks, cross flags: made by the DataLoader workers in training, so here
    ahead of the timing), pinned on a GPU. The step cycles through them."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for epoch in range(count):
        batch = {}
        for source, size in batch_sizes.items():
            roles = {"row": torch.arange(size)}
            for role in SOURCE_ROLES[source]:
                roles[role] = raw_tiles(role, (size, int(sensors[role]), img, img), generator)
            batch[source] = roles
        batch = draws.add_to(batch, epoch)
        if pin:
            batch = {s: {r: t.pin_memory() for r, t in roles.items()} for s, roles in batch.items()}
        batches.append(batch)
    return batches


def peak_tflops(ctx: DistContext) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak from the table (None: not in it)."""
    if ctx.device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(ctx.device)
    peak = next((value for key, value in PEAK_TFLOPS if key in name), None)
    return name, peak


def optimiser_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, loss: torch.Tensor
) -> None:
    """What the trainer does after the forward (msgfm.train.runner.Trainer._optimise)."""
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss)
    precision.clip_and_step(optimizer, model.parameters(), 5.0)


def build_steps(
    args: argparse.Namespace, ctx: DistContext
) -> tuple[dict[str, Step], dict[str, Any]]:
    """Our step and timm's, each a closure returning the images it fed the encoder."""
    model_cfg, pretrain = load_settings(args.preset)
    specs = source_specs(pretrain)
    batch_sizes = {spec.name: spec.batch_size for spec in specs}
    torch.manual_seed(0)
    ours = build_model(model_cfg).to(ctx.device)
    cfg = ours.config
    images = sum(size * len(SOURCE_ROLES[name]) for name, size in batch_sizes.items())
    reference = SwinTransformer(
        img_size=cfg["img_size"], in_chans=3, num_classes=0, embed_dim=cfg["embed_dim"],
        depths=cfg["depths"], num_heads=cfg["num_heads"], window_size=cfg["window_size"],
        mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"], drop_path_rate=0.0,
    ).to(ctx.device)  # fmt: skip
    fused = switch_on(pretrain.get("fused_adamw", "auto"), ctx.device)
    weight_decay = float(pretrain.get("weight_decay", 0.05))
    optimizers = {
        name: build_optimizer(param_groups(m, weight_decay=weight_decay), lr=1e-4, fused=fused)
        for name, m in (("msgfm", ours), ("timm", reference))
    }
    precision = job_precision(pretrain.get("amp", "bf16"), ctx.device)
    tf32 = set_tf32(pretrain.get("tf32", "auto"), ctx.device)
    compile_setting = pretrain.get("compile", "auto") if args.compile is None else args.compile
    calls = {"msgfm": wrap_ddp(ours, ctx), "timm": wrap_ddp(reference, ctx)}
    draws = SampleDraws(build_mask_generator(cfg), CROSS_RATE, seed=0)
    raws = itertools.cycle(
        synthetic_batches(
            batch_sizes, cfg["sensors"], cfg["img_size"], draws, ctx.device.type == "cuda"
        )
    )
    ref_images = torch.randn(images, 3, cfg["img_size"], cfg["img_size"], device=ctx.device)
    weights = loss_weights(specs)

    def ours_step() -> int:
        entries, entry_weights = make_entries(next(raws), weights=weights, device=ctx.device)
        with precision.autocast():
            loss, _ = calls["msgfm"](entries, entry_weights)
        optimiser_step(ours, optimizers["msgfm"], precision, loss)
        return sum(len(entry["image"]) for entry in entries.values())

    def timm_step() -> int:
        with precision.autocast():
            loss = calls["timm"](ref_images).float().mean()  # pooled final features
        optimiser_step(reference, optimizers["timm"], precision, loss)
        return images

    steps: dict[str, Step] = {"msgfm": ours_step, "timm": timm_step}
    flops = {name: count_flops(step) for name, step in steps.items()}
    if switch_on(compile_setting, ctx.device):
        calls.update({name: compile_model(m, True, ctx.device) for name, m in calls.items()})
    info = {
        "batch": batch_sizes,
        "images": images,
        "img": cfg["img_size"],
        "preset": cfg["preset"],
        "amp": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
        "compile": switch_on(compile_setting, ctx.device),
        "tf32": tf32,
        "fused": fused,
        "flops": flops,
    }
    return steps, info


def count_flops(step: Step) -> int:
    """FLOPs of one eager step, forward and backward (the optimiser adds no matmuls)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def timed(step: Step, device: torch.device) -> tuple[float, int, int]:
    """(seconds, images, peak bytes on the GPU or 0) of one step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    images = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter() - start, images, torch.cuda.max_memory_allocated(device)
    return time.perf_counter() - start, images, 0


def measure(args: argparse.Namespace, ctx: DistContext) -> None:
    steps, info = build_steps(args, ctx)
    for _ in range(args.warmup):  # allocator, cuDNN/cuBLAS heuristics, compilation
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0)
    images = dict.fromkeys(steps, 0)
    for rep in range(args.steps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        for name in order:
            elapsed, images[name], peak = timed(steps[name], ctx.device)
            seconds[name].append(elapsed)
            peaks[name] = max(peaks[name], peak)
    if ctx.is_main:
        report(ctx, info, seconds, peaks, images)


def report(
    ctx: DistContext,
    info: Mapping[str, Any],
    seconds: Mapping[str, list[float]],
    peaks: Mapping[str, int],
    images: Mapping[str, int],
) -> None:
    name, peak = peak_tflops(ctx)
    batch = ", ".join(f"{source} {size}" for source, size in info["batch"].items())
    print(
        f"device: {name} ({ctx.device.type}), {ctx.world_size} process(es), preset "
        f"{info['preset']}, amp {info['amp']}, compile {info['compile']}, tf32 {info['tf32']}, "
        f"fused AdamW {info['fused']}"
    )
    print(
        f"per-GPU batch: {batch} -> {info['images']} encoder images of {info['img']} px; "
        f"timm: {info['images']} RGB images"
    )
    flops = info["flops"]
    print(f"flops per step: msgfm {flops['msgfm']:.4g}, timm {flops['timm']:.4g}")
    for model in seconds:
        step_s = statistics.median(seconds[model])
        rate = images[model] / step_s
        memory = (
            f"peak memory {peaks[model] / 2**30:.2f} GiB"
            if ctx.device.type == "cuda"
            else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
            " (process, both models)"
        )
        achieved = flops[model] / step_s / 1e12
        mfu = (
            f"MFU {100 * achieved / peak:.1f} % of {peak:.0f}"
            if peak
            else f"MFU n/a ({name}: no peak in the table)"
        )
        print(
            f"{model:5s}: {step_s * 1e3:.1f} ms/step, {rate:.1f} samples/s per GPU "
            f"({rate * ctx.world_size:.1f} total over {ctx.world_size}), {memory}, "
            f"{achieved:.3f} TFLOP/s per GPU, {mfu}"
        )
    pairs = zip(seconds["timm"], seconds["msgfm"], strict=True)
    ratio = statistics.median(
        (images["msgfm"] / ours) / (images["timm"] / ref) for ref, ours in pairs
    )
    print(f"ratio msgfm/timm samples/s per GPU: {ratio:.3f}x")


def relaunch(nproc: int) -> int:
    """This script again under torchrun, N processes on this node; returns its exit status."""
    argv, skip = [], False
    for arg in sys.argv[1:]:  # everything but --nproc N / --nproc=N
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        argv.append(arg)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", __file__, *argv,
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["paper", "demo"], default="paper")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions of each step")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each first")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile both steps (default: the config's pretrain.compile, auto = CUDA)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    args = parser.parse_args()
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise SystemExit(relaunch(args.nproc))
    ctx = init_distributed(args.device)
    try:
        measure(args, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
