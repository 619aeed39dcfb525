"""Train-step cost of msGFM (Swin-B + MoE, per-sensor stem and decoder) against timm's Swin-B.

Both do forward + backward at the same input on the CPU: ours the full SimMIM loss on a masked
S2 batch (stem, encoder with 9 MoE blocks, decoder, masked L1 + aux), timm's dense Swin-B with
``in_chans`` = 13 the mean of its final features. timm ships no window-6/192 Swin v1 preset, so
the reference is ``SwinTransformer`` built with the paper's arguments. Steps alternate between
the models so load from other processes hits them alike. Each model's median and minimum are
printed; the ratios use the minimum, because on a CPU shared with other jobs the noise only ever
adds time (timeit's argument), and a median of a few reps still swings with other jobs' load.
Our model with dense MLPs is timed too, to separate the MoE's share from the rest (stem,
decoder, loss). The last line is the ratio ours (with MoE) / timm.

    python bench/train_step.py [--batch 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from timm.models.swin_transformer import SwinTransformer

from msgfm.model.factory import build_mask_generator, build_model

IMG, CHANNELS = 192, 13


def _timed(step: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    step().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

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
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            times[name].append(_timed(step))
    best = {name: min(values) for name, values in times.items()}
    print(f"threads {torch.get_num_threads()}, batch {args.batch}×{CHANNELS}×{IMG}×{IMG}")
    for name, values in times.items():
        median = statistics.median(values)
        runs = [round(t, 3) for t in values]
        print(f"{name:22s} min {best[name]:.3f} s  median {median:.3f} s  {runs}")
    timm_s = best["timm swin-b (dense)"]
    print(f"ratio dense ours/timm: {best['msgfm swin_base dense'] / timm_s:.3f}x")
    print(f"ratio ours/timm: {best['msgfm swin_base+moe'] / timm_s:.3f}x")


if __name__ == "__main__":
    main()
