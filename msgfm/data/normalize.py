"""Raw sensor values as stored in the shards → the model's float input, in torch.

One definition serves both places that normalise: a finetuning DataLoader worker (on the
CPU) and the pretraining step, which sends tiles to the GPU as stored (uint8 RGB, uint16
Sentinel-2: a quarter or half of float32's bytes over PCIe and through pinned memory) and
normalises them there. Only elementwise ops and per-tile reductions with Python constants,
so on a GPU nothing is copied from the host and nothing waits for it.
"""

from __future__ import annotations

import torch

from msgfm.data.sensors import RGB_MEAN, RGB_STD, S2_MAX_REFLECTANCE, SAR_DB_RANGE, SENSORS


def normalize(sensor: str, raw: torch.Tensor) -> torch.Tensor:
    """Map a raw (C, H, W) or (N, C, H, W) tensor of one sensor to float32 model input.

    - rgb: uint8 → [0, 1] → ImageNet mean/std (the statistics GFM/SimMIM use).
    - s2: reflectance clipped to [0, 10000] and divided by 10000.
    - sar: σ0 in dB clipped to [-25, 0] and rescaled to [0, 1]; NaNs were already replaced
      by 0 dB at tiling time and counted in the tiling report.
    - dsm: standardised per tile (metres relative to the tile's own mean and spread), because
      absolute heights differ between MDAS and Vaihingen by hundreds of metres.
    """
    x = raw.float()
    if sensor == "rgb":
        channel_axis = x.ndim - 3
        channels = [
            (band / 255.0 - float(mean)) / float(std)
            for band, mean, std in zip(x.unbind(channel_axis), RGB_MEAN, RGB_STD, strict=True)
        ]
        return torch.stack(channels, dim=channel_axis)
    if sensor == "s2":
        return x.clamp(0.0, S2_MAX_REFLECTANCE) / S2_MAX_REFLECTANCE
    if sensor == "sar":
        low, high = SAR_DB_RANGE
        return (x.nan_to_num(nan=0.0).clamp(low, high) - low) / (high - low)
    if sensor == "dsm":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, correction=0)
        return (x - mean) / (std + 1e-6)
    raise KeyError(f"unknown sensor {sensor!r}; expected one of {sorted(SENSORS)}")
