"""The shared Swin v1 encoder, assembled from timm's stages, with a choice of MLP per block.

It starts *after* the patch embedding: input is the NHWC token grid (B, H/4, W/4, C) that a
per-sensor stem produced (and the mask token edited), so one encoder serves every sensor.
The stages are timm's ``SwinTransformerStage`` (each opens with ``PatchMerging`` except the
first), so the hierarchy, window attention, shifted windows and relative position bias are
timm's own code. ``mlp_layer`` (as timm's ``Block`` takes one) may give any block another
``mlp``: msGFM's MoE layers (paper §3.4, Table 10: every other block of stage 3, i.e. blocks
1, 3, …, 17 of 18; ``msgfm.model.factory.moe_mlp_layer``). An MLP that routes tokens (``MoEMlp``)
has ``routing_groups`` and ``aux_loss``, which the encoder sets and sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformerStage
from torch import nn

from msgfm.model.config import stage_resolutions

# A block's MLP: (stage, block, width, hidden width) → the module, or None to keep timm's Mlp.
MlpLayer = Callable[[int, int, int, int], nn.Module | None]
# What one routing covers when several sources' batches share a trunk pass: "source" (each
# source's batch alone, as the paper's sensor-by-sensor loading, §3.4) or "step".
ROUTING_SCOPES = ("source", "step")


class SwinEncoder(nn.Module):
    """Swin v1 stages + final LayerNorm over a pre-embedded NHWC token grid."""

    def __init__(
        self,
        *,
        img_size: int = 192,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        mlp_layer: MlpLayer | None = None,
        routing_scope: str = "source",
    ) -> None:
        super().__init__()
        if routing_scope not in ROUTING_SCOPES:
            raise ValueError(
                f"moe routing_scope {routing_scope!r} unknown; expected one of {ROUTING_SCOPES}"
            )
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ")
        self.patch_size = patch_size
        self.window_size = window_size
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        self.num_features = self.dims[-1]
        self.stride = patch_size * 2 ** (len(depths) - 1)
        resolutions = stage_resolutions(img_size, patch_size, len(depths))
        total = sum(depths)
        # linearly rising stochastic depth, as torch.linspace but without a tensor (meta-safe)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            stages.append(
                SwinTransformerStage(
                    dim=self.dims[max(i - 1, 0)],
                    out_dim=self.dims[i],
                    input_resolution=(resolutions[max(i - 1, 0)],) * 2,
                    depth=depth,
                    downsample=i > 0,
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[start : start + depth],
                )
            )
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)
        self.routing_scope = routing_scope
        # Swapped after the init above: a swapped-in MLP keeps its own init, and the dense
        # weights it replaces are drawn first, so a seed gives the same weights as ever.
        for i, stage in enumerate(self.stages if mlp_layer is not None else ()):
            for j, block in enumerate(stage.blocks):
                mlp = mlp_layer(i, j, self.dims[i], int(self.dims[i] * mlp_ratio))
                if mlp is not None:
                    block.mlp = mlp

    def moe_blocks(self) -> list[tuple[int, int]]:
        """(stage, block) indices whose MLP routes tokens (an MoE layer)."""
        return [
            (i, j)
            for i, stage in enumerate(self.stages)
            for j, block in enumerate(stage.blocks)
            if hasattr(block.mlp, "routing_groups")
        ]

    def moe_layers(self) -> list[nn.Module]:
        """The MLPs that route tokens, in block order."""
        return [self.stages[s].blocks[b].mlp for s, b in self.moe_blocks()]

    def _route_in_groups(self, samples: Sequence[int] | None) -> None:
        """Tell the MoE layers that this forward's batch joins consecutive groups of these
        many samples (one source's batch each; None = one group). With ``routing_scope:
        source`` each group is routed alone, with ``step`` all tokens together
        (msgfm.model.msgfm). Set on every forward, so no call inherits another's groups."""
        groups = None
        if samples is not None and self.routing_scope == "source":
            groups = tuple(samples)
        for layer in self.moe_layers():
            layer.routing_groups = groups

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE balancing losses of the last forward (0 without MoE)."""
        losses = [m.aux_loss for m in self.moe_layers() if isinstance(m.aux_loss, torch.Tensor)]
        if not losses:
            return self.norm.weight.new_zeros(())
        return torch.stack(losses).sum()

    def forward_stages(
        self, tokens: torch.Tensor, groups: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Raw NHWC outputs of every stage (no norm), for heads that tap several scales;
        ``groups``: samples per source when several sources share the pass (MoE routing)."""
        self._route_in_groups(groups)
        outputs = []
        x = tokens
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(
        self,
        tokens: torch.Tensor,
        return_stages: bool = False,
        groups: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final map (B, C_last, H/32, W/32) after the final norm; with ``return_stages`` also
        the raw per-stage maps in NCHW (for UperNet), which carry no norm: heads add their own.
        """
        stages = self.forward_stages(tokens, groups)
        final = self.norm(stages[-1]).permute(0, 3, 1, 2).contiguous()
        if not return_stages:
            return final
        return final, [s.permute(0, 3, 1, 2).contiguous() for s in stages]

    def forward_distill(
        self, tokens: torch.Tensor, groups: Sequence[int] | None = None
    ) -> torch.Tensor:
        """GFM's student features: the stage-3 output after the last patch merging,
        before the last stage's blocks and the final norm; NHWC (B, H/32, W/32, C_last).
        (timm opens each stage with its merging, where the original Swin closes one with it.)
        """
        self._route_in_groups(groups)
        x = tokens
        for stage in self.stages[:-1]:
            x = stage(x)
        return self.stages[-1].downsample(x)

    def forward_with_distill(
        self, tokens: torch.Tensor, groups: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass giving both ``forward_features`` (NCHW) and ``forward_distill`` (NHWC)."""
        merged = self.forward_distill(tokens, groups)
        final = self.norm(self.stages[-1].blocks(merged))
        return final.permute(0, 3, 1, 2).contiguous(), merged

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_features(tokens)

    def set_grad_checkpointing(self, enable: bool | Sequence[bool] = True) -> None:
        """Recompute blocks in the backward pass (timm's per-stage switch) to save memory:
        one flag for all stages or one per stage (stage 3 holds 18 of Swin-B's 24 blocks)."""
        flags = [enable] * len(self.stages) if isinstance(enable, bool) else list(enable)
        if len(flags) != len(self.stages):
            raise ValueError(
                f"activation checkpointing flags {flags}: expected one per stage "
                f"({len(self.stages)})"
            )
        for stage, flag in zip(self.stages, flags, strict=True):
            stage.grad_checkpointing = bool(flag)

    def set_input_size(self, img_size: int) -> None:
        """Rebuild attention masks for another input size (finetuning at 512 px, say); timm pads
        windows that do not divide a stage's grid.
        """
        resolutions = stage_resolutions(img_size, self.patch_size, len(self.stages))
        for i, stage in enumerate(self.stages):
            stage.set_input_size(
                feat_size=(resolutions[max(i - 1, 0)],) * 2, window_size=self.window_size
            )


def _init_weights(module: nn.Module) -> None:
    """Swin/SimMIM init: trunc-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
