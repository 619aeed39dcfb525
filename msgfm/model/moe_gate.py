"""tutel's top-k gate in plain PyTorch: logits, noise, capacity, slots and auxiliary losses.

This reproduces the routing of ``tutel.moe.moe_layer`` as the Swin-MoE code configures it
(paper §3.4, Table 10), so that a model trained with the native layer and one trained with
tutel route the same tokens to the same experts given the same weights and the same noise.
Every step is vectorised over tokens; the only Python loop runs over the k routing choices
(k is 1 or 2).
Nothing here reads a device value on the host (no ``.item()``, no data-dependent shape), so a
GPU never stalls the CPU in routing and ``torch.compile(fullgraph=True)`` sees one graph.

The routing works on the N tokens it is given (the local batch). With several processes each one
routes its own tokens, so capacity and priority are per process, exactly as in tutel.
``route_groups`` routes consecutive groups of tokens (one source's batch each) as if each came
alone, and packs their slots so that one dispatch serves them all (msgfm.model.moe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUX_LOSSES = ("swin", "gshard")


class TopKGate(nn.Module):
    """The linear router: ``logits = x · Wgᵀ`` in fp32, whatever autocast says.

    The parameter is ``wg.weight`` (E × D, no bias) so that a checkpoint written by tutel
    (``gates.0.wg.weight``) loads as is.
    """

    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.wg = nn.Linear(dim, num_experts, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Return fp32 logits (N, E) for tokens (N, D); autocast is off so routing is exact."""
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            return F.linear(tokens.float(), self.wg.weight.float())


@dataclass(frozen=True)
class Routing:
    """Where each token goes: one column per routing choice (k columns)."""

    experts: Tensor  # (N, k) int64: the expert of each choice
    slots: Tensor  # (N, k) int64: position in that expert's buffer; >= capacity means dropped
    gates: Tensor  # (N, k) fp32, differentiable: the weight of the expert's output
    capacity: int  # slots per expert, known without looking at the data (static_capacity)
    reported_capacity: int | Tensor  # tutel's capacity: a 0-dim device tensor when cf <= 0
    aux_loss: Tensor  # fp32 scalar, differentiable


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """tutel's capacity C = k·⌊cf·⌈N/E⌉⌋ for cf > 0 (cf <= 0 is handled in route())."""
    tokens_per_expert = -(-num_tokens // num_experts)
    return top_k * int(capacity_factor * tokens_per_expert)


def one_hot(indices: Tensor, num_classes: int) -> Tensor:
    """``F.one_hot`` without its range check, which reads min and max on the host on CPU."""
    classes = torch.arange(num_classes, device=indices.device)
    return (indices.unsqueeze(-1) == classes).long()


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation with unbiased variance, as tutel's losses compute it."""
    values = values.float()
    return values.var() / (values.mean() ** 2 + 1e-10)


def swin_aux_loss(
    clean_logits: Tensor, noisy_logits: Tensor, topk_experts: Tensor, gate_noise: float
) -> Tensor:
    """Importance + load balancing loss (tutel ``load_importance_loss``, Swin-MoE's choice).

    Load compares each token's clean probabilities with its k-th largest *noisy logit* through
    the normal CDF with scale gate_noise/E. Mixing a probability with a logit looks like a slip,
    but it is what tutel computes and what Swin-MoE was trained with, so it is kept.
    """
    num_experts = clean_logits.size(1)
    clean_probs = F.softmax(clean_logits, dim=1)
    importance = clean_probs.sum(0)
    threshold = noisy_logits.gather(1, topk_experts[:, -1:])
    load = torch.special.ndtr((clean_probs - threshold) / (gate_noise / num_experts)).sum(0)
    return (cv_squared(importance) + cv_squared(load)) / 2.0


def gshard_aux_loss(noisy_scores: Tensor, top1_experts: Tensor) -> Tensor:
    """GShard's loss E·Σ_e mean_prob_e·frac_tokens_e, on the noisy scores as tutel does."""
    num_experts = noisy_scores.size(1)
    fraction = one_hot(top1_experts, num_experts).float().mean(0)
    return num_experts * (noisy_scores.mean(0) * fraction).sum()


def _slots_per_choice(choices: Tensor, num_experts: int, priority_scores: Tensor | None) -> Tensor:
    """Slot of every (token, choice): how many earlier assignments went to the same expert.

    "Earlier" is token order, or descending priority when batch-prioritised. Choice j's slots
    start after all assignments of choices < j to that expert (tutel's ``acc_base``), so a
    token's second choice never takes a slot from anyone's first choice.
    """
    order = None
    if priority_scores is not None:
        order = torch.argsort(priority_scores, descending=True, stable=True)
    offset = choices.new_zeros(num_experts)
    slots = []
    for column in choices.unbind(1):
        hot = one_hot(column, num_experts)
        if order is None:
            positions = hot.cumsum(0) - 1
        else:
            positions = torch.empty_like(hot)
            positions[order] = hot[order].cumsum(0) - 1
        slots.append(positions.gather(1, column[:, None])[:, 0] + offset[column])
        offset = offset + hot.sum(0)
    return torch.stack(slots, dim=1)


def route(
    logits: Tensor,
    *,
    top_k: int,
    capacity_factor: float,
    gate_noise: float,
    training: bool,
    batch_prioritized: bool,
    aux_loss: str,
) -> Routing:
    """Route N tokens given their clean fp32 logits (N, E), exactly as tutel's top-k gate.

    capacity_factor follows tutel: > 0 gives C = k·⌊cf·⌈N/E⌉⌋; 0 sizes C to the busiest
    expert (nothing is dropped); < 0 does the same but caps C at k·⌊|cf|·⌈N/E⌉⌋.
    """
    num_experts = logits.size(1)
    noisy_logits = logits
    if training and gate_noise > 0:
        noise = torch.randn_like(logits)
        noisy_logits = logits + gate_noise * noise / num_experts
    scores = F.softmax(noisy_logits, dim=1)
    top_scores, experts = torch.topk(scores, top_k, dim=1)
    gates = top_scores
    if top_k > 1:
        gates = gates / gates.sum(1, keepdim=True).clamp(min=torch.finfo(gates.dtype).eps)

    if aux_loss == "swin":
        loss = swin_aux_loss(logits, noisy_logits, experts, gate_noise)
    else:
        loss = gshard_aux_loss(scores, experts[:, 0])

    priority = top_scores[:, 0].detach() if batch_prioritized else None
    slots = _slots_per_choice(experts, num_experts, priority)

    capacity, reported = static_capacity(slots, num_experts, top_k, capacity_factor)
    return Routing(
        experts=experts,
        slots=slots,
        gates=gates,
        capacity=capacity,
        reported_capacity=reported,
        aux_loss=loss,
    )


def static_capacity(
    slots: Tensor, num_experts: int, top_k: int, capacity_factor: float
) -> tuple[int, int | Tensor]:
    """The drop threshold as a Python int from shapes alone, and tutel's capacity to report.

    For cf <= 0 tutel sets C to the busiest expert's load (capped at k·⌊|cf|·⌈N/E⌉⌋ for
    cf < 0), which needs the slots' maximum on the host. Every slot is below the busiest load
    and below N (a token's k choices are k different experts, so an expert gets at most N
    assignments), so a threshold of N (cf = 0) or min(N, cap) (cf < 0) drops exactly the
    assignments tutel drops. tutel's value is still reported, as a device tensor that is read
    only when logged.
    """
    num_tokens = slots.size(0)
    capacity = expert_capacity(num_tokens, num_experts, top_k, abs(capacity_factor))
    if capacity_factor > 0:
        return capacity, capacity
    busiest = slots.max() + 1
    if capacity_factor == 0:
        return num_tokens, busiest
    return min(num_tokens, capacity), busiest.clamp(max=capacity)


def route_groups(logits: Tensor, group_tokens: Sequence[int], **settings: Any) -> Routing:
    """Route consecutive token groups independently, as one ``route`` call per group would.

    Each group gets its own capacity, priority order and balancing loss (the losses are
    summed), so one trunk pass over several sources' batches routes exactly as one pass per
    source (msgfm.model.msgfm). The groups' slots are then packed per expert: group g's kept
    slots of expert e follow those of groups < g, so every expert's kept slots are again
    exactly 0..kept-1 under one capacity, the sum of the groups' (dropped ones get that sum),
    and one dispatch serves all groups. ``group_tokens`` are Python ints (shapes, not data).
    """
    if sum(group_tokens) != logits.size(0):
        raise ValueError(
            f"routing groups {list(group_tokens)} do not add up to {logits.size(0)} tokens"
        )
    routings = [route(part, **settings) for part in logits.split(list(group_tokens))]
    if len(routings) == 1:
        return routings[0]
    num_experts = logits.size(1)
    total_capacity = sum(r.capacity for r in routings)
    packed, base = [], logits.new_zeros(num_experts, dtype=torch.long)
    for routing in routings:
        kept = routing.slots < routing.capacity
        packed.append(torch.where(kept, base[routing.experts] + routing.slots, total_capacity))
        base = base + (one_hot(routing.experts, num_experts) * kept.unsqueeze(-1)).sum((0, 1))
    return Routing(
        experts=torch.cat([r.experts for r in routings]),
        slots=torch.cat(packed),
        gates=torch.cat([r.gates for r in routings]),
        capacity=total_capacity,
        reported_capacity=sum(r.reported_capacity for r in routings),
        aux_loss=torch.stack([r.aux_loss for r in routings]).sum(),
    )
