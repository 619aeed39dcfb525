"""The optimiser's parameter groups, recorded once and compared ever after.

``tests/data/param_groups.json`` holds, for the demo finetuning models (both transfer
methods) and the demo pretraining model, each trainable parameter's weight decay and
``lr_scale`` by name: what the optimiser does to it, however the groups are cut. Regenerate
it (``python tests/test_param_groups.py``) only for a change meant to alter the groups, and
say why in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from msgfm.finetune.model import build_finetune_model, layer_decay_groups
from msgfm.model.factory import build_model
from msgfm.pretrain.batches import SourceSpec, sensor_lr_scales
from msgfm.train.optim import param_groups

RECORD = Path(__file__).parent / "data" / "param_groups.json"
SOURCES = [
    SourceSpec("rgb", ("geopile",), 128, 1e-4),
    SourceSpec("sen12ms", ("sen12ms",), 32, 2.5e-5),
    SourceSpec("mdas", ("mdas",), 12, 1e-5),
]
SENSORS = {"rgb": ["rgb"], "sen12ms": ["sar", "s2"], "mdas": ["rgb", "dsm"]}
FINETUNE = {  # case → (task, transfer, layer decay)
    "finetune_bigearthnet_stacked": ("bigearthnet", "stacked", 0.9),
    "finetune_vaihingen_shared": ("vaihingen", "shared", 0.9),
    "finetune_sen12ms_cr_stacked_no_decay": ("sen12ms_cr", "stacked", 1.0),
}


def _described(model: torch.nn.Module, groups: list[dict[str, Any]]) -> dict[str, list[float]]:
    settings = {
        id(param): [group["weight_decay"], group["lr_scale"]]
        for group in groups
        for param in group["params"]
    }
    assert len(settings) == sum(len(group["params"]) for group in groups), "a parameter twice"
    return {name: settings[id(param)] for name, param in model.named_parameters()}


def current_groups(case: str) -> dict[str, list[float]]:
    torch.manual_seed(0)
    if case == "pretrain":
        model = build_model({"preset": "demo"})
        scales = sensor_lr_scales(SOURCES, SENSORS)
        return _described(model, param_groups(model, weight_decay=0.05, lr_scale_by_prefix=scales))
    task, transfer, decay = FINETUNE[case]
    model = build_finetune_model(
        task, weights="random", transfer=transfer, model_cfg={"preset": "demo"}, img_size=64
    )
    groups = layer_decay_groups(model, base_lr=3e-4, layer_decay=decay, weight_decay=0.05)
    return _described(model, groups)


CASES = ["pretrain", *FINETUNE]


@pytest.mark.parametrize("case", CASES)
def test_parameter_groups_match_the_record(case: str) -> None:
    recorded = json.loads(RECORD.read_text())[case]
    assert current_groups(case) == recorded


if __name__ == "__main__":
    cases = [
        f"{json.dumps(case)}: {{\n"
        + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in current_groups(case).items())
        + "\n}"
        for case in CASES
    ]
    RECORD.write_text("{\n" + ",\n".join(cases) + "\n}\n")
