"""Sparsely gated Mixture-of-Experts MLP, a drop-in replacement for a Swin block's ``.mlp``.

msGFM replaces the MLPs of every other stage-3 Swin block with a top-1 MoE of 8 experts
(paper Table 10), as Swin-MoE does with tutel. tutel does not install from any package index
(it compiles an extension even for CPU), so the tested path is ``backend="native"``: a pure
PyTorch layer that reproduces tutel's routing (moe_gate.py) and its expert network, under
tutel's parameter names, so checkpoints move between the two backends unchanged.

Native dispatch: the kept (token, choice) pairs are sorted by expert (an expert's kept slots
are exactly 0..kept-1, so expert offset + slot is the sorted position), gathered into one
(K, D) block with no padding, and each expert multiplies exactly its own rows
(``GroupedLinear``, a hand-written backward that writes every weight gradient in its
parameter's layout); the outputs are scaled by their gate weights and added back per token.
Profiled on CPU at Swin-B stage-3 size (bench/moe_layer.py --profile), the layer's time is
the expert matmuls; autograd through batched matmuls over a zero-padded (E, C, D) buffer
spends over a quarter of its time (batch 2) on a strided copy of fc1's transposed weight
gradient and a fifth of its matmul work on padding rows. What remains above a dense MLP of
the same FLOPs is memory traffic: the eight experts' weights are read twice and their
gradients written once per step (64 MiB each at D=512, H=2048), eight times the dense MLP's
bytes; on glibc the gradients' fresh pages dominate that (see ``msgfm.train.memory``).

That grouped dispatch reads routing results on the host in every layer (``nonzero`` and
boolean indexing to find the kept pairs, the per-expert counts as Python ints to slice the
rows): harmless on CPU, where the host is the device, but on a GPU each read stops the CPU
from queueing work ahead, and under ``torch.compile(fullgraph=True)`` each is a graph break.
The capacity dispatch has static shapes and no host read: every kept (token, choice) goes to
row ``expert * C + slot`` of a zero (E·C + 1, D) buffer, the dropped ones to the spare last
row; the experts run as batched matmuls over (E, C, D), and each (token, choice) reads its
output back from its row (the spare row's output is 0, so dropped tokens output exactly 0).
It pads each expert to C rows, 1.25-1.35x the grouped dispatch's CPU time at Swin-B size
(bench/moe_layer.py), so ``dispatch="auto"`` takes the grouped dispatch in CPU eager mode and
the capacity dispatch on any other device or while compiling. ``torch._grouped_mm`` (grouped
matmuls with device-side offsets, no padding) is not used: in torch 2.14 on CPU its float32
backward fails ("Invalid strides/sizes") and rows past the last offset are left uninitialised.

Initialisation (decided): experts like timm's Mlp and Swin-MoE (trunc-normal std 0.02 weights,
zero biases); the router weight trunc-normal std 0.02, which is what Swin-MoE's model-wide
``_init_weights`` gives it. Dropout ``drop`` acts after the activation only (Swin-MoE's
``moe_drop``); unlike timm's Mlp there is no dropout after fc2, so both backends agree.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from msgfm.model.moe_gate import (
    AUX_LOSSES,
    Routing,
    TopKGate,
    expert_capacity,
    one_hot,
    route_groups,
)

BACKENDS = ("native", "tutel")
DISPATCHES = ("grouped", "capacity", "auto")
TUTEL_ENV = "envs/pretrain_tutel.yaml"


class GroupedLinear(torch.autograd.Function):
    """Expert e's linear layer on its own contiguous block of rows, with a hand-written backward.

    ``x`` holds the kept tokens sorted by expert; ``bounds[e]:bounds[e + 1]`` are expert e's
    rows, so every expert multiplies exactly the tokens it kept: no capacity padding, no zero
    rows. ``weight`` is (E, out, in) used as ``x @ W[e]ᵀ`` (tutel's fc1) or, with
    ``out_in=False``, (E, in, out) used as ``x @ W[e]`` (tutel's fc2). autograd through a
    transposed batched matmul would produce fc1's weight gradient as a transposed view that
    AccumulateGrad then copies (a strided 32 MiB copy per Swin-B MoE layer, 27% of the layer's
    time at batch 2); here every gradient is written in its parameter's layout by one matmul per
    expert, and an expert that kept no token gets exact zeros.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, bounds: list[int], out_in: bool
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.bounds, ctx.out_in = bounds, out_in
        out = x.new_empty(x.size(0), weight.size(1 if out_in else 2))
        for e, (start, stop) in enumerate(itertools.pairwise(bounds)):
            if stop > start:
                matrix = weight[e].t() if out_in else weight[e]
                torch.addmm(bias[e], x[start:stop], matrix, out=out[start:stop])
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.new_empty(weight.size(0), grad_out.size(1))
        for e, (start, stop) in enumerate(itertools.pairwise(ctx.bounds)):
            rows, grad_rows = x[start:stop], grad_out[start:stop]
            if grad_x is not None and stop > start:
                matrix = weight[e] if ctx.out_in else weight[e].t()
                torch.mm(grad_rows, matrix, out=grad_x[start:stop])
            if grad_w is not None:
                if ctx.out_in:
                    torch.mm(grad_rows.t(), rows, out=grad_w[e])
                else:
                    torch.mm(rows.t(), grad_rows, out=grad_w[e])
            if grad_b is not None:
                torch.sum(grad_rows, dim=0, out=grad_b[e])
        return grad_x, grad_w, grad_b, None, None


class BatchedExperts(nn.Module):
    """E two-layer MLPs stored as stacked tensors, under tutel's ffn-expert parameter names.

    Shapes follow tutel: fc1 (E, H, D) used as ``x @ W1ᵀ``, fc2 (E, H, D_out) used as
    ``h @ W2``, biases (E, H) and (E, D_out).
    """

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.batched_fc1_w = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.batched_fc2_w = nn.Parameter(torch.empty(num_experts, hidden_dim, out_dim))
        self.batched_fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.batched_fc2_bias = nn.Parameter(torch.empty(num_experts, out_dim))
        init_experts(self)

    # Dynamo cannot trace GroupedLinear (a Function over data-dependent row bounds: it fails,
    # and torch.compile would drop the whole model to eager); excluded, the rest compiles.
    @torch.compiler.disable
    def forward(
        self, tokens: Tensor, counts: list[int], activation: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Run expert e on its ``counts[e]`` consecutive rows of tokens (K, D) -> (K, D_out)."""
        tokens, (fc1_w, fc1_b, fc2_w, fc2_b) = self._in_matmul_dtype(tokens)
        bounds = [0, *itertools.accumulate(counts)]
        with torch.autocast(tokens.device.type, enabled=False):
            hidden = GroupedLinear.apply(tokens, fc1_w, fc1_b, bounds, True)
            return GroupedLinear.apply(activation(hidden), fc2_w, fc2_b, bounds, False)

    def padded(self, buffer: Tensor, activation: Callable[[Tensor], Tensor]) -> Tensor:
        """Run expert e on row block ``buffer[e]`` of (E, C, D) -> (E, C, D_out), no host read.

        fc1 computes the hidden layer transposed, (E, H, C) = W1 · xᵀ: autograd then writes
        fc1's weight gradient by one batched matmul straight in its (E, H, D) layout, where
        ``x · W1ᵀ`` would hand AccumulateGrad a transposed view to copy. Likewise fc2's
        gradient (hidden · grad) comes out (E, H, D_out). The activation is elementwise, so the
        layout does not change it.
        """
        buffer, (fc1_w, fc1_b, fc2_w, fc2_b) = self._in_matmul_dtype(buffer)
        with torch.autocast(buffer.device.type, enabled=False):
            hidden_t = torch.baddbmm(fc1_b.unsqueeze(2), fc1_w, buffer.transpose(1, 2))
            return torch.baddbmm(fc2_b.unsqueeze(1), activation(hidden_t).transpose(1, 2), fc2_w)

    def _in_matmul_dtype(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Tokens and (fc1_w, fc1_b, fc2_w, fc2_b) in the dtype the expert matmuls run in.

        Under autocast that is the autocast dtype, as autocast would run the matmuls; the
        casts stay in the graph, so the gradients come back in the parameters' dtype.
        """
        params = (
            self.batched_fc1_w,
            self.batched_fc1_bias,
            self.batched_fc2_w,
            self.batched_fc2_bias,
        )
        device_type = tokens.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            return tokens.to(dtype), tuple(param.to(dtype) for param in params)
        return tokens, params


def init_experts(experts: nn.Module) -> None:
    """timm Mlp / Swin-MoE initialisation for either backend's expert module."""
    with torch.no_grad():
        nn.init.trunc_normal_(experts.batched_fc1_w, std=0.02)
        nn.init.trunc_normal_(experts.batched_fc2_w, std=0.02)
        nn.init.zeros_(experts.batched_fc1_bias)
        nn.init.zeros_(experts.batched_fc2_bias)


def _import_tutel_moe() -> Any:
    """Import tutel only when asked for, with an error that says how to get it."""
    try:
        from tutel import moe as tutel_moe
    except ImportError as error:
        raise ImportError(
            "MoEMlp(backend='tutel') needs tutel, which is on no package index: it is built "
            f"from source in the conda env {TUTEL_ENV} (pip install "
            "git+https://github.com/microsoft/tutel). Use backend='native' otherwise; it "
            "routes identically and loads the same checkpoints."
        ) from error
    return tutel_moe


def _world_size() -> int:
    """Processes training together: the process group's size, else torchrun's WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


class MoEMlp(nn.Module):
    """Top-k MoE MLP with tutel's gate; input (..., D) -> output (..., D_out).

    All leading dimensions are flattened into N tokens that are routed together (tutel routes
    the whole local batch at once, so capacity and priority depend on the batch).
    After each forward, ``aux_loss`` holds the differentiable balancing loss (the caller
    weights and sums it) and ``last_stats`` detached routing statistics: ``load`` (assignments
    per expert before dropping), ``kept`` (after), ``dropped_fraction`` and ``capacity``. The
    first three are device tensors, and so is ``capacity`` when capacity_factor <= 0 (tutel
    then sizes it from the routing): they cost no host read until someone logs them.
    With ``backend="tutel"`` the routing happens inside tutel, so only ``capacity`` is known
    and the three others are None.

    ``dispatch`` picks how the native backend moves tokens to experts (module docstring):
    "grouped" (fastest on CPU, reads the host), "capacity" (static shapes, no host read) or
    "auto" (grouped in CPU eager mode, capacity on other devices and under torch.compile).

    ``routing_groups`` (samples per group, set by the encoder for its next forward; None = one
    group) splits the leading dimension into consecutive groups that are routed as if each
    came alone: own capacity, priority and balancing loss (summed). One trunk pass over
    several sources' batches then routes exactly as one pass per source (msgfm.model.msgfm).
    """

    routing_groups: tuple[int, ...] | None = None

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        num_experts: int = 8,
        top_k: int = 1,
        capacity_factor: float = 1.25,
        gate_noise: float = 1.0,
        batch_prioritized: bool = True,
        aux_loss: str = "swin",
        backend: str = "native",
        dispatch: str = "auto",
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 2:
            raise ValueError(f"MoEMlp: num_experts must be >= 2, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"MoEMlp: top_k must be in [1, num_experts={num_experts}], got {top_k}"
            )
        if aux_loss not in AUX_LOSSES:
            raise ValueError(f"MoEMlp: aux_loss must be one of {AUX_LOSSES}, got {aux_loss!r}")
        if aux_loss == "swin" and gate_noise <= 0:
            raise ValueError(
                "MoEMlp: aux_loss='swin' scales its load term by gate_noise/num_experts, so "
                f"gate_noise must be > 0 (tutel refuses 0 too), got {gate_noise}; "
                "use aux_loss='gshard' for a noise-free gate"
            )
        if gate_noise < 0:
            raise ValueError(f"MoEMlp: gate_noise must be >= 0, got {gate_noise}")
        if backend not in BACKENDS:
            raise ValueError(f"MoEMlp: backend must be one of {BACKENDS}, got {backend!r}")
        if dispatch not in DISPATCHES:
            raise ValueError(f"MoEMlp: dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        self.dim, self.hidden_dim = dim, hidden_dim
        self.out_dim = out_dim or dim
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor, self.gate_noise = capacity_factor, gate_noise
        self.batch_prioritized = batch_prioritized
        self.aux_loss_type = aux_loss
        self.backend, self.dispatch = backend, dispatch
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.aux_loss: Tensor = torch.zeros(())
        self.last_stats: dict[str, Any] = {}
        if backend == "native":
            self.gates = nn.ModuleList([TopKGate(dim, num_experts)])
            self.experts = BatchedExperts(num_experts, dim, hidden_dim, self.out_dim)
        else:
            self._build_tutel()
        with torch.no_grad():
            nn.init.trunc_normal_(self.gates[0].wg.weight, std=0.02)

    def _hidden_activation(self, hidden: Tensor) -> Tensor:
        return self.drop(self.act(hidden))

    def _build_tutel(self) -> None:
        """Configure tutel exactly as Swin-MoE does and adopt its gate and experts.

        tutel's layer is kept outside the module tree; its ``gates`` and ``experts`` become
        this module's submodules, so the state dict has the same names as the native backend
        (``gates.0.wg.weight``, ``experts.batched_fc1_w``, ...).

        Only in one process: tutel shards experts over processes (``count_per_node`` experts
        on each), so on W processes it would build W times the experts, a different model
        whose checkpoints the native backend cannot load. Refused before tutel is imported.
        """
        world = _world_size()
        if world > 1:
            raise ValueError(
                f"MoEMlp: model.moe.backend: tutel on world size {world} would place "
                f"{self.num_experts} experts on each process ({self.num_experts * world} in "
                "all); use model.moe.backend: native, whose experts are replicated "
                "data-parallel, or run one process"
            )
        tutel_moe = _import_tutel_moe()
        layer = tutel_moe.moe_layer(
            gate_type={
                "type": "top",
                "k": self.top_k,
                "capacity_factor": self.capacity_factor,
                "gate_noise": self.gate_noise,
                "fp32_gate": True,
            },
            model_dim=self.dim,
            experts={
                "type": "ffn",
                "count_per_node": self.num_experts,
                "hidden_size_per_expert": self.hidden_dim,
                "output_dim": self.out_dim,
                "activation_fn": self._hidden_activation,
            },
            batch_prioritized_routing=self.batch_prioritized,
            is_gshard_loss=self.aux_loss_type == "gshard",
        )
        object.__setattr__(self, "_tutel_layer", layer)
        self.gates = layer.gates
        self.experts = layer.experts
        init_experts(self.experts)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden_dim={self.hidden_dim}, out_dim={self.out_dim}, "
            f"num_experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, gate_noise={self.gate_noise}, "
            f"batch_prioritized={self.batch_prioritized}, aux_loss={self.aux_loss_type!r}, "
            f"backend={self.backend!r}, dispatch={self.dispatch!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """Route every token of x (..., D) to its experts; dropped tokens output exactly 0."""
        if x.size(-1) != self.dim:
            raise ValueError(
                f"MoEMlp: expected last dimension {self.dim}, got shape {tuple(x.shape)}"
            )
        tokens = x.reshape(-1, self.dim)
        if tokens.size(0) == 0:
            raise ValueError(f"MoEMlp: got no tokens (input shape {tuple(x.shape)})")
        group_tokens = self._group_tokens(x)
        if self.backend == "tutel":
            out = self._forward_tutel(tokens, group_tokens)
        else:
            out = self._forward_native(tokens, group_tokens)
        return out.reshape(*x.shape[:-1], self.out_dim).to(x.dtype)

    def _group_tokens(self, x: Tensor) -> list[int]:
        """Tokens per routing group: ``routing_groups`` samples times tokens per sample."""
        if self.routing_groups is None or x.dim() < 2:
            return [x.numel() // self.dim]
        if sum(self.routing_groups) != x.size(0):
            raise ValueError(
                f"MoEMlp: routing groups of {list(self.routing_groups)} samples do not add up "
                f"to the input's {x.size(0)}"
            )
        per_sample = x[0].numel() // self.dim
        return [samples * per_sample for samples in self.routing_groups]

    def _forward_tutel(self, tokens: Tensor, group_tokens: list[int]) -> Tensor:
        """tutel routes what it is given, so each group is one call (same result, more calls)."""
        layer = self._tutel_layer
        layer.train(self.training)
        outputs, losses = [], []
        for part in tokens.split(group_tokens):
            outputs.append(layer(part))
            losses.append(layer.l_aux)
        self.aux_loss = torch.stack(losses).sum()
        capacity = None  # with capacity_factor <= 0 tutel sizes it from the routing
        if self.capacity_factor > 0:
            capacity = sum(
                expert_capacity(n, self.num_experts, self.top_k, self.capacity_factor)
                for n in group_tokens
            )
        self.last_stats = {
            "load": None,
            "kept": None,
            "dropped_fraction": None,
            "capacity": capacity,
        }
        return torch.cat(outputs)

    def _forward_native(self, tokens: Tensor, group_tokens: list[int]) -> Tensor:
        routing = route_groups(
            self.gates[0](tokens),
            group_tokens,
            top_k=self.top_k,
            capacity_factor=self.capacity_factor,
            gate_noise=self.gate_noise,
            training=self.training,
            batch_prioritized=self.batch_prioritized,
            aux_loss=self.aux_loss_type,
        )
        self.aux_loss = routing.aux_loss
        kept_counts = self._record_stats(routing)
        if not torch.is_autocast_enabled(tokens.device.type):
            tokens = tokens.to(self.experts.batched_fc1_w.dtype)
        if self._capacity_dispatch(tokens):
            return self._dispatch_capacity(tokens, routing)
        return self._dispatch_grouped(tokens, routing, kept_counts)

    def _capacity_dispatch(self, tokens: Tensor) -> bool:
        """Whether this forward takes the capacity dispatch (``dispatch`` in the class doc)."""
        if self.dispatch == "auto":
            return tokens.device.type != "cpu" or torch.compiler.is_compiling()
        return self.dispatch == "capacity"

    def _dispatch_grouped(self, tokens: Tensor, routing: Routing, kept_counts: Tensor) -> Tensor:
        """Kept (token, choice) pairs sorted by expert, no padding; reads the host (see top)."""
        experts, slots = routing.experts.reshape(-1), routing.slots.reshape(-1)
        kept = slots < routing.capacity
        token_index = kept.nonzero()[:, 0] // self.top_k
        kept_experts, kept_slots = experts[kept], slots[kept]
        # An expert's kept slots are exactly 0..kept-1, so expert offset + slot puts the kept
        # (token, choice) pairs in expert order, each expert's in slot order.
        offsets = kept_counts.cumsum(0) - kept_counts
        order = torch.empty_like(kept_slots)
        order[offsets[kept_experts] + kept_slots] = torch.arange(
            kept_slots.numel(), device=order.device
        )
        token_index = token_index[order]
        gates = routing.gates.reshape(-1)[kept][order]
        expert_out = self.experts(
            tokens.index_select(0, token_index), kept_counts.tolist(), self._hidden_activation
        )
        weighted = gates.unsqueeze(1) * expert_out.float()
        out = weighted.new_zeros(tokens.size(0), self.out_dim)
        return out.index_add(0, token_index, weighted)

    def _dispatch_capacity(self, tokens: Tensor, routing: Routing) -> Tensor:
        """Fixed (E, C) expert buffers: static shapes, no host read (see the module doc).

        C is the routing's capacity, at most N: no slot reaches N (moe_gate.static_capacity),
        so more rows would only pad. With capacity_factor <= 0 that bound is N itself (tutel's
        data-dependent C cannot size a static buffer), so the buffers hold E·N rows.
        """
        num_tokens, num_experts = tokens.size(0), self.num_experts
        capacity = min(routing.capacity, num_tokens)
        rows = self._buffer_rows(routing, capacity)
        choices = tokens.unsqueeze(1).expand(-1, self.top_k, -1).reshape(-1, self.dim)
        buffer = tokens.new_zeros(num_experts * capacity + 1, self.dim)
        # Only the spare last row receives several tokens (all dropped ones); it is never read.
        buffer = buffer.index_put((rows,), choices)
        expert_in = buffer[:-1].view(num_experts, capacity, self.dim)
        expert_out = self.experts.padded(expert_in, self._hidden_activation)
        expert_out = nn.functional.pad(expert_out.reshape(-1, self.out_dim), (0, 0, 0, 1))
        gathered = expert_out.index_select(0, rows).view(num_tokens, self.top_k, self.out_dim)
        return (routing.gates.unsqueeze(2) * gathered.float()).sum(1)

    def _buffer_rows(self, routing: Routing, capacity: int) -> Tensor:
        """Row of every (token, choice) in the (E·C + 1)-row buffer; dropped ones get row E·C."""
        experts, slots = routing.experts.reshape(-1), routing.slots.reshape(-1)
        spare = torch.full_like(slots, self.num_experts * capacity)
        return torch.where(slots < capacity, experts * capacity + slots, spare)

    @torch.no_grad()
    def _record_stats(self, routing: Routing) -> Tensor:
        """Fill ``last_stats`` with device tensors and return the kept count per expert.

        One-hot sums instead of ``bincount`` (whose output length needs the maximum on the
        host) and instead of boolean indexing, so recording costs no host read.
        """
        experts = routing.experts.reshape(-1)
        kept = routing.slots.reshape(-1) < routing.capacity
        assigned = one_hot(experts, self.num_experts)
        kept_counts = (assigned * kept.unsqueeze(1)).sum(0)
        self.last_stats = {
            "load": assigned.sum(0),
            "kept": kept_counts,
            "dropped_fraction": 1.0 - kept_counts.sum().float() / experts.numel(),
            "capacity": routing.reported_capacity,
        }
        return kept_counts
