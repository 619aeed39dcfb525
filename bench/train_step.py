"""Train-step cost of msGFM (Swin-B + MoE, per-sensor stem and decoder) against timm's Swin-B.

All do forward + backward at the same input on the CPU: ours the full SimMIM loss on a masked
S2 batch (stem, encoder with 9 MoE blocks, decoder, masked L1 + aux), timm's dense Swin-B with
``in_chans`` = 13 the mean of its final features. timm ships no window-6/192 Swin v1 preset, so
the reference is ``SwinTransformer`` built with the paper's arguments. Our model with dense MLPs
is timed too, to separate the MoE's share from the rest (stem, decoder, loss).

Each repetition runs the three models back to back, so load from other processes hits them
alike, and the ratios reported are medians over repetitions of the per-repetition ratios. Both
wall time and this process's CPU time are measured: with one thread, CPU time is the step's own
work and does not count the time slices that other processes take on a shared machine, so its
ratios are the stable ones there (wall-time ratios are printed too).

The MoE's cost above the dense model is mostly memory traffic that no kernel avoids: per step
each MoE layer reads its 8 experts' weights twice (forward, and input gradients) and writes
their gradients once, into freshly allocated memory when gradients are set to None (glibc
serves a 32 MiB gradient with mmap, so the kernel faults in and zeroes each of its pages). The
script measures this machine's read and first-touch write bandwidth (CPU time) and prints the
floor: our dense step plus the MoE's extra bytes at those speeds, over timm's step.
By default the script first calls ``msgfm.train.memory.retain_freed_cpu_memory``, as the
training verbs do on CPU (glibc then reuses freed 32 MiB blocks instead of mapping fresh pages,
which removes most of that floor, for every model alike); ``--glibc-default`` measures with
glibc's default thresholds instead. The last line is the CPU-time ratio ours (with MoE) / timm.

    OMP_NUM_THREADS=1 python bench/train_step.py [--batch 2] [--reps 7] [--glibc-default]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from msgfm.model.factory import build_mask_generator, build_model
from msgfm.train.memory import retain_freed_cpu_memory

IMG, CHANNELS = 192, 13
PROBE_BYTES = 32 * 2**20  # one Swin-B stage-3 expert weight stack (8 x 2048 x 512 fp32)


def _timed(step: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """(wall, CPU) seconds of one forward + backward."""
    wall, cpu = time.perf_counter(), time.process_time()
    step().backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def _median_cpu_seconds(action: Callable[[], object], reps: int = 7) -> float:
    action()
    times = []
    for _ in range(reps):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return statistics.median(times)


def bandwidths() -> tuple[float, float]:
    """Bytes/s of a streaming read, and of writing freshly allocated (never touched) memory."""
    data = torch.ones(8 * PROBE_BYTES // 4)
    read = data.numel() * 4 / _median_cpu_seconds(data.sum)
    fresh = _median_cpu_seconds(lambda: torch.empty(PROBE_BYTES // 4).fill_(1.0))
    first_touch = PROBE_BYTES / fresh
    return read, first_touch


def moe_extra_bytes(model: nn.Module) -> int:
    """Bytes of expert weights beyond one expert per MoE layer (what a dense MLP would hold)."""
    extra = 0
    for module in model.encoder.moe_layers():
        weights = sum(p.numel() * p.element_size() for p in module.experts.parameters())
        extra += weights - weights // module.num_experts
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's mmap/trim thresholds (the training verbs raise them on CPU)",
    )
    args = parser.parse_args()
    allocator = "glibc default"
    if not args.glibc_default:
        retained = retain_freed_cpu_memory()
        allocator = "freed memory retained" if retained else "default (not glibc)"

    torch.manual_seed(0)
    ours = build_model({"preset": "swin_base"}).train()
    dense = build_model({"preset": "swin_base", "moe": {"enabled": False}}).train()
    reference = SwinTransformer(
        img_size=IMG, in_chans=CHANNELS, num_classes=0, embed_dim=128, depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32), window_size=6, mlp_ratio=4.0, qkv_bias=True,
        drop_path_rate=0.0,
    ).train()  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, CHANNELS, IMG, IMG, generator=generator)
    mask = build_mask_generator({"preset": "swin_base"}).batch(args.batch, generator)
    batch = {"s2": {"image": image, "mask": mask}}

    def ours_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        return ours(batch)[0]

    def dense_step() -> torch.Tensor:
        dense.zero_grad(set_to_none=True)
        return dense(batch)[0]

    def timm_step() -> torch.Tensor:
        reference.zero_grad(set_to_none=True)
        return reference.forward_features(image).mean()

    steps = {
        "msgfm swin_base+moe": ours_step,
        "msgfm swin_base dense": dense_step,
        "timm swin-b (dense)": timm_step,
    }
    for step in steps.values():  # warm-up: allocator, kernels
        _timed(step)
    walls: dict[str, list[float]] = {name: [] for name in steps}
    cpus: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            wall, cpu = _timed(step)
            walls[name].append(wall)
            cpus[name].append(cpu)

    def ratio(times: dict[str, list[float]], name: str) -> float:
        pairs = zip(times[name], times["timm swin-b (dense)"], strict=True)
        return statistics.median(t / ref for t, ref in pairs)

    read_bw, touch_bw = bandwidths()
    extra = moe_extra_bytes(ours)
    # Forward and input-gradient matmuls read the extra weights; the gradients write them fresh.
    floor_s = 2 * extra / read_bw + extra / touch_bw
    dense_s = statistics.median(cpus["msgfm swin_base dense"])
    timm_s = statistics.median(cpus["timm swin-b (dense)"])
    print(
        f"threads {torch.get_num_threads()}, batch {args.batch}×{CHANNELS}×{IMG}×{IMG}, "
        f"allocator: {allocator}"
    )
    for name in steps:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        runs = [round(t, 3) for t in cpus[name]]
        print(f"{name:22s} median wall {wall:.3f} s, CPU {cpu:.3f} s  CPU {runs}")
    print(
        f"bandwidth: read {read_bw / 1e9:.1f} GB/s, first-touch write {touch_bw / 1e9:.1f} GB/s; "
        f"MoE extra expert bytes {extra / 2**20:.0f} MiB -> {floor_s * 1e3:.0f} ms per step"
    )
    print(f"floor ours/timm (dense ours + MoE bytes): {(dense_s + floor_s) / timm_s:.3f}x")
    print(f"wall-time ratio ours/timm: {ratio(walls, 'msgfm swin_base+moe'):.3f}x")
    print(f"ratio dense ours/timm: {ratio(cpus, 'msgfm swin_base dense'):.3f}x")
    print(f"ratio ours/timm: {ratio(cpus, 'msgfm swin_base+moe'):.3f}x")


if __name__ == "__main__":
    main()
