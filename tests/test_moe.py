"""MoEMlp against hand-worked routing cases and an independent per-token reference."""

from __future__ import annotations

import importlib.util
import math
import platform

import numpy as np
import pytest
import torch
from scipy.stats import norm

from msgfm.model.moe import TUTEL_ENV, GroupedLinear, MoEMlp
from msgfm.model.moe_gate import expert_capacity
from msgfm.train.memory import retain_freed_cpu_memory

TUTEL_AVAILABLE = importlib.util.find_spec("tutel") is not None


def set_gate(layer: MoEMlp, weight: list[list[float]]) -> None:
    with torch.no_grad():
        layer.gates[0].wg.weight.copy_(torch.tensor(weight))


def expert_mlp(layer: MoEMlp, expert: int, token: torch.Tensor) -> torch.Tensor:
    """One expert on one token, written from the formula fc2(GELU(fc1·x + b1)) + b2."""
    params = layer.experts
    hidden = params.batched_fc1_w[expert] @ token + params.batched_fc1_bias[expert]
    hidden = torch.nn.functional.gelu(hidden)
    return hidden @ params.batched_fc2_w[expert] + params.batched_fc2_bias[expert]


def reference_forward(layer: MoEMlp, tokens: torch.Tensor, noise: torch.Tensor | None = None):
    """tutel's routing one token at a time: the slow, obvious version to compare against.

    The routing decisions are made without gradients; the output is differentiable with
    respect to the tokens and every parameter of the layer (gate included, through the scores).
    """
    num_tokens, num_experts, k = tokens.size(0), layer.num_experts, layer.top_k
    logits = tokens.double() @ layer.gates[0].wg.weight.double().T
    if noise is not None:
        logits = logits + layer.gate_noise * noise.double() / num_experts
    scores = torch.softmax(logits, dim=1)
    capacity = k * math.floor(layer.capacity_factor * math.ceil(num_tokens / num_experts))
    with torch.no_grad():
        choices = [
            torch.argsort(scores[t], descending=True)[:k].tolist() for t in range(num_tokens)
        ]
        order = list(range(num_tokens))
        if layer.batch_prioritized:
            order.sort(key=lambda t: -float(scores[t].max()))
        used = [0] * num_experts
        slot = {}
        for j in range(k):
            for t in order:
                expert = choices[t][j]
                slot[t, j] = used[expert]
                used[expert] += 1
    rows = []
    dropped = 0
    for t in range(num_tokens):
        weights = [scores[t, e] for e in choices[t]]
        if k > 1:
            weights = [w / sum(weights) for w in weights]
        row = torch.zeros(layer.out_dim, dtype=torch.float64)
        for j, expert in enumerate(choices[t]):
            if slot[t, j] >= capacity:
                dropped += 1
                continue
            row = row + weights[j] * expert_mlp(layer, expert, tokens[t]).double()
        rows.append(row)
    return torch.stack(rows), dropped / (num_tokens * k), capacity


def randomised_experts(layer: MoEMlp, seed: int) -> None:
    """Non-zero biases and larger weights than the init, so every term of the formula counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.experts.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


# Four tokens, two experts, cf 1.0 -> C = 2. Tokens 0-2 all prefer expert 0 with rising scores
# sigmoid(1) < sigmoid(2) < sigmoid(3); token 3 prefers expert 1.
OVERFLOW_TOKENS = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
IDENTITY_GATE = [[1.0, 0.0], [0.0, 1.0]]


def overflow_layer(batch_prioritized: bool) -> MoEMlp:
    layer = MoEMlp(
        2, 4, num_experts=2, capacity_factor=1.0, batch_prioritized=batch_prioritized
    ).eval()
    set_gate(layer, IDENTITY_GATE)
    randomised_experts(layer, seed=1)
    return layer


def test_capacity_formula() -> None:
    assert expert_capacity(2304, 8, 1, 1.25) == 360  # Swin-B stage 3, batch 16 at 192 px
    assert expert_capacity(10, 4, 1, 1.25) == 3  # 1 * floor(1.25 * ceil(2.5))
    assert expert_capacity(10, 4, 2, 1.25) == 6
    assert expert_capacity(4, 2, 1, 1.0) == 2
    assert expert_capacity(3, 4, 1, 0.5) == 0


@pytest.mark.parametrize(("batch_prioritized", "dropped_token"), [(True, 0), (False, 2)])
def test_overflow_drops_by_priority(batch_prioritized: bool, dropped_token: int) -> None:
    """Batch-prioritised: the lowest-scoring token loses its slot; otherwise the latest one."""
    layer = overflow_layer(batch_prioritized)
    out = layer(OVERFLOW_TOKENS)
    assert torch.equal(out[dropped_token], torch.zeros(2))
    stats = layer.last_stats
    assert stats["capacity"] == 2
    assert stats["load"].tolist() == [3, 1]
    assert stats["kept"].tolist() == [2, 1]
    assert float(stats["dropped_fraction"]) == pytest.approx(0.25)
    for token in set(range(4)) - {dropped_token}:
        expert = 1 if token == 3 else 0
        gate = 1.0 / (1.0 + math.exp(-float(OVERFLOW_TOKENS[token].abs().sum())))
        expected = gate * expert_mlp(layer, expert, OVERFLOW_TOKENS[token])
        torch.testing.assert_close(out[token], expected.detach(), rtol=1e-5, atol=1e-6)


def test_zero_capacity_factor_drops_nothing() -> None:
    layer = overflow_layer(batch_prioritized=True)
    layer.capacity_factor = 0.0
    out = layer(OVERFLOW_TOKENS)
    assert layer.last_stats["capacity"] == 3
    assert float(layer.last_stats["dropped_fraction"]) == 0.0
    assert bool((out.abs().sum(1) > 0).all())


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
@pytest.mark.parametrize(
    ("capacity_factor", "capacity", "dropped"), [(-1.0, 2, 0.25), (-2.0, 3, 0.0)]
)
def test_negative_capacity_factor_caps_the_busiest_load(
    dispatch: str, capacity_factor: float, capacity: int, dropped: float
) -> None:
    """tutel: C = min(busiest load 3, k·⌊|cf|·⌈N/E⌉⌋), i.e. min(3, 2) and min(3, 4)."""
    layer = overflow_layer(batch_prioritized=True)
    layer.capacity_factor, layer.dispatch = capacity_factor, dispatch
    out = layer(OVERFLOW_TOKENS)
    assert int(layer.last_stats["capacity"]) == capacity
    assert float(layer.last_stats["dropped_fraction"]) == pytest.approx(dropped)
    assert bool((out[0] == 0).all()) == (dropped > 0)  # token 0 has the lowest priority


def random_layer(
    top_k: int, batch_prioritized: bool, capacity_factor: float, *, seed: int, expert_seed: int
) -> MoEMlp:
    """A 4-expert layer (D 6, H 10) in eval mode with a random gate and random experts."""
    torch.manual_seed(seed)
    layer = MoEMlp(
        6,
        10,
        num_experts=4,
        top_k=top_k,
        capacity_factor=capacity_factor,
        batch_prioritized=batch_prioritized,
    ).eval()
    with torch.no_grad():
        layer.gates[0].wg.weight.normal_()
    randomised_experts(layer, seed=expert_seed)
    return layer


@pytest.mark.parametrize(
    ("top_k", "batch_prioritized", "capacity_factor"),
    [(1, True, 1.25), (1, False, 0.6), (1, True, 0.6), (2, True, 0.8), (2, False, 0.7)],
)
def test_matches_per_token_reference(
    top_k: int, batch_prioritized: bool, capacity_factor: float
) -> None:
    """Random weights and tokens, capacities that drop tokens: every output matches."""
    layer = random_layer(
        top_k,
        batch_prioritized,
        capacity_factor,
        seed=top_k * 10 + int(batch_prioritized),
        expert_seed=2,
    )
    tokens = torch.randn(23, 6)
    expected, dropped, capacity = reference_forward(layer, tokens)
    out = layer(tokens)
    assert layer.last_stats["capacity"] == capacity
    assert float(layer.last_stats["dropped_fraction"]) == pytest.approx(dropped)
    assert dropped > 0 or capacity_factor >= 1.25
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("top_k", "batch_prioritized", "capacity_factor"),
    [(1, True, 0.6), (1, False, 1.25), (2, True, 0.8)],
)
def test_gradients_match_per_token_reference(
    top_k: int, batch_prioritized: bool, capacity_factor: float
) -> None:
    """The hand-written expert backward gives autograd's gradients for every input."""
    layer = random_layer(top_k, batch_prioritized, capacity_factor, seed=20 + top_k, expert_seed=5)
    tokens = torch.randn(19, 6, requires_grad=True)
    upstream = torch.randn(19, 6)
    params = [tokens, *layer.parameters()]
    ours = torch.autograd.grad((layer(tokens) * upstream).sum(), params)
    expected, dropped, _ = reference_forward(layer, tokens)
    assert dropped > 0 or capacity_factor >= 1.25
    reference = torch.autograd.grad((expected * upstream.double()).sum(), params)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
def test_expert_without_tokens_gets_exactly_zero_gradient(dispatch: str) -> None:
    """Positive tokens never pick experts 2 and 3 (negative logits): their grads are 0."""
    layer = MoEMlp(2, 4, num_experts=4, capacity_factor=1.0, dispatch=dispatch).eval()
    set_gate(layer, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    randomised_experts(layer, seed=6)
    layer(torch.rand(8, 2) + 0.1).sum().backward()
    assert layer.last_stats["kept"][2:].tolist() == [0, 0]
    for name, param in layer.experts.named_parameters():
        assert torch.equal(param.grad[2:], torch.zeros_like(param.grad[2:])), name
        assert bool(param.grad[:2].abs().sum() > 0), name


@pytest.mark.parametrize("out_in", [True, False])
def test_grouped_linear_gradcheck(out_in: bool) -> None:
    """Finite differences agree with the per-expert backward, an expert with 0 rows included."""
    generator = torch.Generator().manual_seed(7)
    bounds = [0, 2, 2, 5]
    weight_shape = (3, 4, 3) if out_in else (3, 3, 4)
    inputs = (
        torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(weight_shape, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(
        lambda x, w, b: GroupedLinear.apply(x, w, b, bounds, out_in), inputs
    )


def test_training_noise_is_gate_noise_over_experts() -> None:
    """In training the routing uses logits + gate_noise·N(0,1)/E, drawn from torch's RNG."""
    layer = MoEMlp(6, 10, num_experts=4, capacity_factor=0.8, gate_noise=3.0)
    randomised_experts(layer, seed=3)
    tokens = torch.randn(17, 6)
    torch.manual_seed(5)
    out = layer(tokens)
    torch.manual_seed(5)
    noise = torch.randn(17, 4)
    expected, _, _ = reference_forward(layer, tokens, noise=noise)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_training_is_not() -> None:
    layer = MoEMlp(8, 16, num_experts=4, gate_noise=1.0)
    tokens = torch.randn(2, 9, 8)
    layer.eval()
    first, first_aux = layer(tokens), layer.aux_loss
    assert torch.equal(first, layer(tokens))
    assert torch.equal(first_aux, layer.aux_loss)
    layer.train()
    assert not torch.equal(layer(tokens), layer(tokens))


def numpy_cv_squared(values: np.ndarray) -> float:
    return float(values.var(ddof=1) / (values.mean() ** 2 + 1e-10))


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def swin_loss_numpy(logits: np.ndarray, noisy: np.ndarray, k: int, gate_noise: float) -> float:
    num_experts = logits.shape[1]
    probs = numpy_softmax(logits)
    threshold = np.sort(noisy, axis=1)[:, -k][:, None]
    load = norm.cdf(probs - threshold, scale=gate_noise / num_experts).sum(0)
    return (numpy_cv_squared(probs.sum(0)) + numpy_cv_squared(load)) / 2


@pytest.mark.parametrize("top_k", [1, 2])
def test_swin_aux_loss_in_training(top_k: int) -> None:
    layer = MoEMlp(6, 8, num_experts=5, top_k=top_k, gate_noise=2.0)
    with torch.no_grad():
        layer.gates[0].wg.weight.normal_()
    tokens = torch.randn(31, 6)
    torch.manual_seed(11)
    layer(tokens)
    torch.manual_seed(11)
    noise = torch.randn(31, 5).numpy().astype(np.float64)
    logits = tokens.double().numpy() @ layer.gates[0].wg.weight.detach().double().numpy().T
    expected = swin_loss_numpy(logits, logits + 2.0 * noise / 5, top_k, 2.0)
    assert float(layer.aux_loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_swin_aux_loss_in_eval_uses_clean_threshold() -> None:
    """Hand case: logits (2, 0) and (0, 0), E=2, gate_noise 1 -> thresholds 2 and 0."""
    layer = MoEMlp(2, 4, num_experts=2, gate_noise=1.0).eval()
    set_gate(layer, IDENTITY_GATE)
    layer(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    p = 1 / (1 + math.exp(-2))
    importance = np.array([p + 0.5, 1 - p + 0.5])
    load = np.array(
        [norm.cdf((p - 2) / 0.5) + norm.cdf(0.5 / 0.5), norm.cdf((1 - p - 2) / 0.5) + norm.cdf(1.0)]
    )
    expected = (numpy_cv_squared(importance) + numpy_cv_squared(load)) / 2
    assert float(layer.aux_loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_gshard_aux_loss() -> None:
    """Hand case: E·Σ mean_prob·fraction with top-1 choices (0, 1, 0)."""
    layer = MoEMlp(2, 4, num_experts=2, aux_loss="gshard", gate_noise=0.0).eval()
    set_gate(layer, IDENTITY_GATE)
    layer(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]]))
    s1, s3, s2 = (1 / (1 + math.exp(-v)) for v in (1.0, 3.0, 2.0))
    mean_prob = np.array([s1 + (1 - s3) + s2, (1 - s1) + s3 + (1 - s2)]) / 3
    expected = 2 * float((mean_prob * np.array([2 / 3, 1 / 3])).sum())
    assert float(layer.aux_loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_gshard_aux_loss_uses_noisy_scores_in_training() -> None:
    layer = MoEMlp(4, 8, num_experts=3, aux_loss="gshard", gate_noise=1.5)
    with torch.no_grad():
        layer.gates[0].wg.weight.normal_()
    tokens = torch.randn(13, 4)
    torch.manual_seed(2)
    layer(tokens)
    torch.manual_seed(2)
    noise = torch.randn(13, 3).double().numpy()
    logits = tokens.double().numpy() @ layer.gates[0].wg.weight.detach().double().numpy().T
    scores = numpy_softmax(logits + 1.5 * noise / 3)
    fraction = np.bincount(scores.argmax(1), minlength=3) / 13
    expected = 3 * float((scores.mean(0) * fraction).sum())
    assert float(layer.aux_loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_gate_and_experts() -> None:
    layer = MoEMlp(8, 16, num_experts=4)
    out = layer(torch.randn(3, 7, 8))
    out.square().sum().backward(retain_graph=True)
    for name, param in layer.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    gate = layer.gates[0].wg.weight
    gate.grad = None
    layer.aux_loss.backward()
    assert bool(gate.grad.abs().sum() > 0)


def test_state_dict_uses_tutel_names_and_shapes() -> None:
    layer = MoEMlp(8, 32, num_experts=4, out_dim=6)
    shapes = {name: tuple(value.shape) for name, value in layer.state_dict().items()}
    assert shapes == {
        "gates.0.wg.weight": (4, 8),
        "experts.batched_fc1_w": (4, 32, 8),
        "experts.batched_fc2_w": (4, 32, 6),
        "experts.batched_fc1_bias": (4, 32),
        "experts.batched_fc2_bias": (4, 6),
    }
    assert int(torch.count_nonzero(layer.experts.batched_fc1_bias)) == 0
    assert float(layer.experts.batched_fc1_w.detach().std()) == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize("shape", [(2, 5, 8), (10, 8), (2, 3, 3, 8)])
def test_output_shape_matches_input(shape: tuple[int, ...]) -> None:
    layer = MoEMlp(8, 16, num_experts=4)
    assert layer(torch.randn(shape)).shape == shape
    assert MoEMlp(8, 16, num_experts=4, out_dim=6)(torch.randn(shape)).shape == (*shape[:-1], 6)


def test_batch_tokens_are_routed_together() -> None:
    """(B, N, C) is routed as B·N tokens, so it equals the flattened (B·N, C) call."""
    layer = MoEMlp(8, 16, num_experts=4, capacity_factor=0.7).eval()
    tokens = torch.randn(3, 6, 8)
    torch.testing.assert_close(layer(tokens).reshape(18, 8), layer(tokens.reshape(18, 8)))


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
def test_autocast_keeps_gate_in_fp32(dispatch: str) -> None:
    layer = MoEMlp(8, 16, num_experts=4, dispatch=dispatch).eval()
    tokens = torch.randn(40, 8)
    reference = layer(tokens)
    load = layer.last_stats["load"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(tokens)
    assert out.dtype == torch.float32 and layer.aux_loss.dtype == torch.float32
    assert torch.equal(layer.last_stats["load"], load)
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
def test_autocast_backward_gives_fp32_gradients(dispatch: str) -> None:
    """Under bf16 autocast the expert matmuls run in bf16; gradients come back in fp32."""
    layer = MoEMlp(8, 16, num_experts=4, dispatch=dispatch).eval()
    randomised_experts(layer, seed=8)
    tokens = torch.randn(40, 8)
    params = list(layer.experts.parameters())
    reference = torch.autograd.grad(layer(tokens).sum(), params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(tokens)
    grads = torch.autograd.grad(out.sum(), params)
    for got, want in zip(grads, reference, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_cpu_memory_is_accepted_by_glibc() -> None:
    """glibc accepts both thresholds; a forward + backward still gives the same gradients."""
    layer = MoEMlp(8, 16, num_experts=4).eval()
    tokens = torch.randn(12, 8)
    before = torch.autograd.grad(layer(tokens).sum(), list(layer.parameters()))
    assert retain_freed_cpu_memory()
    after = torch.autograd.grad(layer(tokens).sum(), list(layer.parameters()))
    for first, second in zip(before, after, strict=True):
        assert torch.equal(first, second)


def test_stats_are_detached() -> None:
    layer = MoEMlp(8, 16, num_experts=4)
    layer(torch.randn(12, 8))
    assert not layer.last_stats["dropped_fraction"].requires_grad
    assert layer.aux_loss.requires_grad


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gate_noise must be > 0"):
        MoEMlp(8, 16, gate_noise=0.0)
    with pytest.raises(ValueError, match="top_k"):
        MoEMlp(8, 16, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="aux_loss"):
        MoEMlp(8, 16, aux_loss="switch")
    with pytest.raises(ValueError, match="backend"):
        MoEMlp(8, 16, backend="deepspeed")
    with pytest.raises(ValueError, match="last dimension 8"):
        MoEMlp(8, 16)(torch.randn(3, 4))


@pytest.mark.skipif(TUTEL_AVAILABLE, reason="tutel is installed: the error path cannot occur")
def test_tutel_backend_without_tutel_names_the_env() -> None:
    with pytest.raises(ImportError, match=TUTEL_ENV):
        MoEMlp(8, 16, backend="tutel")


def test_tutel_backend_is_refused_on_several_processes(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for two ranks
    with pytest.raises(ValueError, match=r"model\.moe\.backend: tutel on world size 2 .*16 in"):
        MoEMlp(8, 16, backend="tutel")
    assert MoEMlp(8, 16, backend="native").experts.batched_fc1_w.shape[0] == 8


@pytest.mark.skipif(
    not TUTEL_AVAILABLE,
    reason=f"tutel is not importable (it builds from source only, in {TUTEL_ENV})",
)
@pytest.mark.parametrize("aux_loss", ["swin", "gshard"])
def test_native_matches_tutel(aux_loss: str) -> None:
    """Same weights, eval mode (no noise), capacity that drops: same outputs and aux loss."""
    torch.manual_seed(0)
    settings = {"num_experts": 4, "capacity_factor": 0.8, "aux_loss": aux_loss}
    native = MoEMlp(8, 16, **settings).eval()
    with torch.no_grad():
        native.gates[0].wg.weight.normal_()
    randomised_experts(native, seed=4)
    tutel_layer = MoEMlp(8, 16, backend="tutel", **settings).eval()
    tutel_layer.load_state_dict(native.state_dict())
    tokens = torch.randn(2, 15, 8)
    torch.testing.assert_close(tutel_layer(tokens), native(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tutel_layer.aux_loss, native.aux_loss, rtol=1e-5, atol=1e-7)


def dispatch_twins(top_k: int, capacity_factor: float, *, seed: int) -> tuple[MoEMlp, MoEMlp]:
    """The same random layer (D 6, H 10, 4 experts) with dispatch grouped and capacity."""
    grouped = random_layer(top_k, True, capacity_factor, seed=seed, expert_seed=seed + 1)
    grouped.dispatch = "grouped"
    capacity = MoEMlp(
        6, 10, num_experts=4, top_k=top_k, capacity_factor=capacity_factor, dispatch="capacity"
    ).eval()
    capacity.load_state_dict(grouped.state_dict())
    return grouped, capacity


def forward_backward(
    layer: MoEMlp, tokens: torch.Tensor, upstream: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Output, aux loss and the gradients of (output · upstream + aux) for input and params."""
    tokens = tokens.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same gate noise in training mode
    out = layer(tokens)
    loss = (out * upstream).sum() + layer.aux_loss
    grads = torch.autograd.grad(loss, [tokens, *layer.parameters()])
    return out.detach(), layer.aux_loss.detach(), list(grads)


@pytest.mark.parametrize(
    ("num_tokens", "top_k", "capacity_factor", "training"),
    [
        (23, 1, 0.6, False),
        (40, 1, 1.25, False),
        (9, 1, 0.5, True),
        (19, 2, 0.8, False),
        (31, 2, 0.6, True),
        (17, 1, 0.0, False),
        (21, 2, -0.7, False),
    ],
)
def test_capacity_dispatch_equals_grouped(
    num_tokens: int, top_k: int, capacity_factor: float, training: bool
) -> None:
    """Outputs, aux loss, statistics and every gradient agree; dropped tokens output exactly 0."""
    grouped, capacity = dispatch_twins(top_k, capacity_factor, seed=num_tokens)
    grouped.train(training)
    capacity.train(training)
    tokens, upstream = torch.randn(num_tokens, 6), torch.randn(num_tokens, 6)
    want_out, want_aux, want_grads = forward_backward(grouped, tokens, upstream, seed=3)
    got_out, got_aux, got_grads = forward_backward(capacity, tokens, upstream, seed=3)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_aux, want_aux)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for key in ("load", "kept", "dropped_fraction", "capacity"):
        assert torch.equal(
            torch.as_tensor(capacity.last_stats[key]), torch.as_tensor(grouped.last_stats[key])
        ), key
    dropped = (want_out == 0).all(1)
    assert torch.equal(got_out[dropped], torch.zeros_like(got_out[dropped]))
    if top_k == 1 and 0 < capacity_factor < 1:
        assert bool(dropped.any())  # the case under test: some tokens lose their only choice


@pytest.mark.parametrize(("top_k", "capacity_factor"), [(1, 0.8), (2, 1.25), (1, 0.0), (2, -0.5)])
def test_capacity_dispatch_reads_nothing_on_the_host(
    host_syncs, top_k: int, capacity_factor: float
) -> None:
    """Training forward + backward, gate noise and dropping included: no host read at all."""
    layer = MoEMlp(8, 16, num_experts=4, top_k=top_k, capacity_factor=capacity_factor)
    layer.dispatch = "capacity"
    tokens = torch.randn(2, 13, 8, requires_grad=True)
    with host_syncs:
        out = layer(tokens)
        (out.square().sum() + layer.aux_loss).backward()
    assert host_syncs.calls == []
    assert tokens.grad is not None and layer.experts.batched_fc1_w.grad is not None


def test_host_sync_counter_finds_the_grouped_dispatch_reads(host_syncs) -> None:
    """The same count on the grouped dispatch is not empty, so the test above can fail."""
    layer = MoEMlp(8, 16, num_experts=4, capacity_factor=0.8, dispatch="grouped")
    tokens = torch.randn(2, 13, 8, requires_grad=True)
    with host_syncs:
        layer(tokens).sum().backward()
    assert "aten.nonzero.default" in host_syncs.calls
    assert "aten.index.Tensor" in host_syncs.calls  # experts[kept], a boolean mask


def test_host_sync_counter_sees_scalar_reads(host_syncs) -> None:
    values = torch.arange(5)
    with host_syncs:
        float(values.sum())
        values[values > 2]
        torch.bincount(values)
        values.repeat_interleave(2)  # int repeats: static output shape, not counted
    assert host_syncs.calls == [
        "aten._local_scalar_dense.default",
        "aten.index.Tensor",
        "aten.bincount.default",
    ]


def test_auto_dispatch_is_grouped_only_in_cpu_eager(monkeypatch) -> None:
    layer = MoEMlp(8, 16, num_experts=4)
    assert layer.dispatch == "auto"
    assert not layer._capacity_dispatch(torch.zeros(2, 8))
    assert layer._capacity_dispatch(torch.zeros(2, 8, device="meta"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert layer._capacity_dispatch(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="dispatch must be one of"):
        MoEMlp(8, 16, dispatch="padded")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_layer_has_one_graph_and_matches_eager(backend: str) -> None:
    """fullgraph=True fails on any graph break; "auto" must pick the capacity dispatch there.

    aot_eager traces forward and backward without generating code; inductor also compiles
    them (C++ on CPU, about 20 s here).
    """
    torch._dynamo.reset()
    eager, _ = dispatch_twins(2, 0.7, seed=4)
    eager.dispatch = "auto"
    compiled = torch.compile(eager, fullgraph=True, backend=backend)
    tokens, upstream = torch.randn(2, 11, 6), torch.randn(2, 11, 6)
    got_out, got_aux, got_grads = forward_backward(compiled, tokens, upstream, seed=0)
    got_stats = dict(eager.last_stats)
    want_out, want_aux, want_grads = forward_backward(eager, tokens, upstream, seed=0)
    assert float(eager.last_stats["dropped_fraction"]) > 0
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_aux, want_aux, rtol=1e-6, atol=1e-7)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_stats["kept"], eager.last_stats["kept"])


@pytest.mark.parametrize("dispatch", ["grouped", "capacity"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_routing_groups_route_as_separate_calls(dispatch: str, top_k: int) -> None:
    """Groups share one dispatch but route alone: output, aux loss and stats as one call each."""
    torch.manual_seed(5)
    layer = MoEMlp(8, 16, num_experts=4, top_k=top_k, capacity_factor=0.75, dispatch=dispatch)
    layer.eval()
    samples = (5, 2, 3)
    x = torch.randn(sum(samples), 6, 8)
    separate, losses, kept = [], [], []
    for part in x.split(samples):
        separate.append(layer(part))
        losses.append(layer.aux_loss)
        kept.append(layer.last_stats["kept"])
    layer.routing_groups = samples
    joint = layer(x)
    torch.testing.assert_close(joint, torch.cat(separate))
    torch.testing.assert_close(layer.aux_loss, torch.stack(losses).sum())
    torch.testing.assert_close(layer.last_stats["kept"], torch.stack(kept).sum(0))
    assert layer.last_stats["dropped_fraction"] > 0  # capacity binds within the groups
    layer.routing_groups = None
    assert not torch.allclose(layer(x), joint)  # one group of all tokens routes otherwise


def test_routing_groups_must_add_up_to_the_batch() -> None:
    layer = MoEMlp(8, 16, num_experts=4)
    layer.routing_groups = (2, 2)
    with pytest.raises(ValueError, match=r"routing groups of \[2, 2\] samples do not add up"):
        layer(torch.randn(5, 3, 8))
