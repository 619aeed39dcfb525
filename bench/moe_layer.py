"""Benchmark: the native MoE layer's batched dispatch vs a per-expert Python loop.

Both contestants do the same math at Swin-B stage-3 size (8 experts, D=512, H=2048, top-1,
capacity factor 1.25, batch-prioritised routing, Swin aux loss): N = 16 images x 144 tokens
(192 px input, 12 x 12 stage-3 map) = 2304 tokens. The loop reference routes each expert's
tokens by masking, keeps the C highest-priority ones and runs that expert's two linears on
them, which is the obvious way to write an MoE layer. The script first checks (eval mode, no
noise) that both give the same outputs, then times forward + backward in training mode on CPU,
interleaving the two so that load from other processes hits both alike. The LAST line is the
ratio naive_time / native_time.

    .venv/bin/python bench/moe_layer.py
    .venv/bin/python bench/moe_layer.py --tokens 4608 --reps 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from msgfm.model.moe import MoEMlp
from msgfm.model.moe_gate import expert_capacity, swin_aux_loss


def per_expert_loop(layer: MoEMlp, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """The same top-1 layer written as a loop over experts with boolean masks."""
    logits = F.linear(tokens, layer.gates[0].wg.weight)
    num_tokens, num_experts = logits.shape
    noisy = logits
    if layer.training:
        noisy = logits + layer.gate_noise * torch.randn_like(logits) / num_experts
    scores = F.softmax(noisy, dim=1)
    top_score, top_expert = scores.max(dim=1)
    aux = swin_aux_loss(logits, noisy, top_expert[:, None], layer.gate_noise)
    capacity = expert_capacity(num_tokens, num_experts, 1, layer.capacity_factor)
    experts = layer.experts
    out = tokens.new_zeros(num_tokens, layer.out_dim)
    for e in range(num_experts):
        routed = (top_expert == e).nonzero()[:, 0]
        priority = torch.argsort(top_score[routed].detach(), descending=True, stable=True)
        kept = routed[priority[:capacity]]
        hidden = F.gelu(
            F.linear(tokens[kept], experts.batched_fc1_w[e], experts.batched_fc1_bias[e])
        )
        expert_out = hidden @ experts.batched_fc2_w[e] + experts.batched_fc2_bias[e]
        out[kept] = top_score[kept, None] * expert_out
    return out, aux


def fwd_bwd_seconds(step) -> float:
    start = time.perf_counter()
    out, aux = step()
    (out.square().mean() + 0.01 * aux).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2304, help="N: batch 16 x 144 tokens")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per contestant")
    args = parser.parse_args()

    torch.manual_seed(0)
    layer = MoEMlp(512, 2048, num_experts=8, top_k=1, capacity_factor=1.25)
    tokens = torch.randn(args.tokens, 512, requires_grad=True)

    layer.eval()
    with torch.no_grad():
        native_out = layer(tokens)
        loop_out, loop_aux = per_expert_loop(layer, tokens)
    difference = float((native_out - loop_out).abs().max())
    if difference > 1e-4 or not torch.allclose(layer.aux_loss, loop_aux):
        raise SystemExit(f"native and per-expert loop disagree (max |diff| = {difference:.2e})")
    layer.train()

    def native_step() -> tuple[Tensor, Tensor]:
        return layer(tokens), layer.aux_loss

    def loop_step() -> tuple[Tensor, Tensor]:
        return per_expert_loop(layer, tokens)

    times: dict[str, list[float]] = {"native": [], "naive": []}
    for rep in range(args.reps + 1):  # the first round warms up allocator and kernels
        for name, step in (("native", native_step), ("naive", loop_step)):
            layer.zero_grad(set_to_none=True)
            seconds = fwd_bwd_seconds(step)
            if rep:
                times[name].append(seconds)

    native, naive = statistics.median(times["native"]), statistics.median(times["naive"])
    stats = layer.last_stats
    print(
        f"N={args.tokens} D=512 H=2048 E=8 top-1 cf=1.25, capacity {stats['capacity']}, "
        f"dropped {float(stats['dropped_fraction']):.1%}, torch threads {torch.get_num_threads()}"
    )
    print(f"outputs agree in eval mode: max |diff| = {difference:.1e}")
    print(f"native forward+backward: median {native * 1e3:.0f} ms over {args.reps} reps")
    print(f"naive  forward+backward: median {naive * 1e3:.0f} ms over {args.reps} reps")
    print(f"moe_layer speedup vs naive per-expert loop: {naive / native:.2f}x")


if __name__ == "__main__":
    main()
