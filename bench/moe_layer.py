"""Benchmark: the native MoE layer vs a per-expert Python loop, and vs a dense MLP of equal FLOPs.

Both MoE contestants do the same math at Swin-B stage-3 size (8 experts, D=512, H=2048, top-1,
capacity factor 1.25, batch-prioritised routing, Swin aux loss): by default N = 16 images x 144
tokens (192 px input, 12 x 12 stage-3 map) = 2304 tokens; ``--tokens 288`` is the batch-2 case.
The loop reference routes each expert's tokens by masking, keeps the C highest-priority ones
and runs that expert's two linears on them, which is the obvious way to write an MoE layer. A
dense MLP (one expert's size, all N tokens) shows what the same FLOPs cost without 8 experts'
weights. "native" is the grouped dispatch (what dispatch="auto" takes on CPU); "capacity" is
the same layer with the sync-free fixed-capacity dispatch (what a GPU or torch.compile takes),
timed to show what its padding costs on CPU. The script first checks (eval mode, no noise)
that the MoE versions give the same outputs, then times forward + backward in training mode
on CPU (this process's CPU time, which other processes' time slices do not inflate),
interleaving the contestants so that their cache and memory-bandwidth load hits them alike;
ratios are medians of per-repetition ratios.
``--profile`` prints the native layer's per-operator CPU time; ``--retain-freed-memory`` lets
glibc reuse freed 32 MiB gradient blocks (msgfm.train.memory.retain_freed_cpu_memory). The LAST
line is the ratio naive_time / native_time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/moe_layer.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/moe_layer.py --tokens 288 --reps 15 --profile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from msgfm.model.moe import MoEMlp
from msgfm.model.moe_gate import expert_capacity, swin_aux_loss
from msgfm.train.memory import retain_freed_cpu_memory


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


def fwd_bwd_seconds(step: Callable[[], tuple[Tensor, Tensor]]) -> float:
    """CPU seconds of this process: with one thread, the step's own work only."""
    start = time.process_time()
    out, aux = step()
    (out.square().mean() + 0.01 * aux).backward()
    return time.process_time() - start


def print_profile(step: Callable[[], None], reps: int) -> None:
    """Per-operator CPU time of the native layer's forward + backward, per step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    events = sorted(prof.key_averages(), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in events) / reps / 1e3
    print(f"native layer profile: {total:.1f} ms self CPU time per step")
    for event in events[:12]:
        per_step = event.self_cpu_time_total / reps / 1e3
        print(f"  {event.key[:48]:48s} {per_step:7.2f} ms  {event.count // reps:4d} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2304, help="N: batch 16 x 144 tokens")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per contestant")
    parser.add_argument("--profile", action="store_true", help="print the native op profile")
    parser.add_argument(
        "--retain-freed-memory", action="store_true", help="glibc: reuse freed large blocks"
    )
    args = parser.parse_args()
    retained = args.retain_freed_memory and retain_freed_cpu_memory()

    torch.manual_seed(0)
    layer = MoEMlp(512, 2048, num_experts=8, top_k=1, capacity_factor=1.25, dispatch="grouped")
    capacity_layer = copy.deepcopy(layer)
    capacity_layer.dispatch = "capacity"
    dense = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
    tokens = torch.randn(args.tokens, 512, requires_grad=True)

    layer.eval()
    with torch.no_grad():
        native_out = layer(tokens)
        loop_out, loop_aux = per_expert_loop(layer, tokens)
        capacity_out = capacity_layer.eval()(tokens)
    difference = float((native_out - loop_out).abs().max())
    if float((native_out - capacity_out).abs().max()) > 1e-4:
        raise SystemExit("grouped and capacity dispatches disagree")
    if difference > 1e-4 or not torch.allclose(layer.aux_loss, loop_aux):
        raise SystemExit(f"native and per-expert loop disagree (max |diff| = {difference:.2e})")
    layer.train()
    capacity_layer.train()

    steps: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
        "native": lambda: (layer(tokens), layer.aux_loss),
        "naive": lambda: per_expert_loop(layer, tokens),
        "capacity": lambda: (capacity_layer(tokens), capacity_layer.aux_loss),
        "dense": lambda: (dense(tokens), torch.zeros(())),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps + 1):  # the first round warms up allocator and kernels
        for name, step in steps.items():
            layer.zero_grad(set_to_none=True)
            capacity_layer.zero_grad(set_to_none=True)
            dense.zero_grad(set_to_none=True)
            seconds = fwd_bwd_seconds(step)
            if rep:
                times[name].append(seconds)

    def ratio(name: str, over: str) -> float:
        pairs = zip(times[name], times[over], strict=True)
        return statistics.median(a / b for a, b in pairs)

    stats = layer.last_stats
    print(
        f"N={args.tokens} D=512 H=2048 E=8 top-1 cf=1.25, capacity {stats['capacity']}, "
        f"dropped {float(stats['dropped_fraction']):.1%}, torch threads {torch.get_num_threads()}, "
        f"freed memory retained: {retained}"
    )
    print(f"outputs agree in eval mode: max |diff| = {difference:.1e}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:8s} forward+backward: median {median * 1e3:.1f} ms over {args.reps} reps")
    if args.profile:

        def native_step() -> None:
            layer.zero_grad(set_to_none=True)
            fwd_bwd_seconds(steps["native"])

        print_profile(native_step, reps=5)
    print(f"native / dense MLP of equal FLOPs: {ratio('native', 'dense'):.2f}x")
    print(f"capacity dispatch / native (grouped): {ratio('capacity', 'native'):.2f}x")
    print(f"moe_layer speedup vs naive per-expert loop: {ratio('naive', 'native'):.2f}x")


if __name__ == "__main__":
    main()
