"""Measure: how MoE encoders route and what that costs them, beside their dense twins.

For every finished BigEarthNet finetuning cell of the given inits (``<results>/finetune/
bigearthnet/<init>/stacked/frac<f>/seed<s>``) it reports
- the cell's test mAP (metrics.json), and for MoE encoders the same test set evaluated with the
  MoE layers at no-drop capacity (capacity factor 0: tutel sizes C to the busiest expert);
- per MoE layer at evaluation (eval mode, the configured capacity factor, the job's eval batch):
  the share of tokens dropped, each expert's share of the load and the load entropy over
  log(E) (1 = balanced, 0 = one expert takes everything: expert collapse);
- per MoE layer in training mode (gate noise on) over the cell's training subset at the job's
  batch size: the dropped share, and how often the gate noise changes a token's top-1 expert
  ("noise flips": tutel adds gate_noise/E x N(0, 1) to the logits, which outweighs a router
  whose logit margins are smaller);
- a linear probe of the *pretrained* encoder (before finetuning): one L2-regularised logistic
  regression per class on the standardised global-average-pooled final features of the
  cell's training subset, test mAP (micro, the tables' metric); for MoE encoders also at
  no-drop capacity.
Then a markdown table of mean ± std over seeds per init and fraction.

    OMP_NUM_THREADS=1 .venv/bin/python bench/moe_routing.py results/demo \
        --inits t6_dense_self t6_moe_self --json moe_routing.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader

from msgfm.data.shards import ShardSet
from msgfm.finetune.data import TaskDataset, collate, task_spec
from msgfm.finetune.loop import build_cell_model, evaluate
from msgfm.finetune.metrics import multilabel_map
from msgfm.finetune.subsets import train_split
from msgfm.train.precision import job_precision

NO_DROP = 0.0  # tutel's capacity factor 0: C = the busiest expert's load, nothing dropped


class RoutingRecorder:
    """Sum each MoE layer's routing over the forwards made while it is open."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.load = [torch.zeros(layer.num_experts, dtype=torch.float64) for layer in layers]
        self.kept = [torch.zeros(layer.num_experts, dtype=torch.float64) for layer in layers]
        self.flips: list[list[float]] = [[] for _ in layers]
        self.hooks = [layer.register_forward_hook(self._count(i)) for i, layer in enumerate(layers)]
        self.hooks += [
            layer.gates[0].register_forward_hook(self._flips(i, layer))
            for i, layer in enumerate(layers)
        ]

    def _count(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.load[i] += module.last_stats["load"].double()
            self.kept[i] += module.last_stats["kept"].double()

        return hook

    def _flips(self, i: int, layer: nn.Module) -> Any:
        def hook(module: nn.Module, args: Any, logits: torch.Tensor) -> None:
            logits = logits.detach().double()
            noise = layer.gate_noise * torch.randn_like(logits) / layer.num_experts
            flipped = (logits + noise).argmax(1) != logits.argmax(1)
            self.flips[i].append(float(flipped.double().mean()))

        return hook

    def close(self) -> list[dict[str, Any]]:
        """Per layer: dropped share, load shares, normalised load entropy, noise-flip share."""
        for hook in self.hooks:
            hook.remove()
        rows = []
        for load, kept, flips in zip(self.load, self.kept, self.flips, strict=True):
            share = load / load.sum()
            entropy = -(share * share.clamp(min=1e-12).log()).sum() / math.log(len(share))
            rows.append(
                {
                    "dropped": float(1 - kept.sum() / load.sum()),
                    "load_share": [round(float(s), 3) for s in share],
                    "entropy": float(entropy),
                    "noise_flips": float(np.mean(flips)),
                }
            )
        return rows


def moe_layers(model: nn.Module) -> list[nn.Module]:
    return model.backbone.encoder.moe_layers()


def set_capacity_factor(model: nn.Module, factor: float) -> None:
    for layer in moe_layers(model):
        layer.capacity_factor = factor


def load_cell(cell: Path, finetuned: bool) -> tuple[dict[str, Any], nn.Module, ShardSet]:
    """A cell's config, its model (finetuned weights, or the pretrained encoder + fresh head)
    and its training subset."""
    cfg = json.loads((cell / "config.json").read_text())
    spec = task_spec(cfg["task"])
    train = train_split(cfg["shards"], cfg.get("subset"))
    torch.manual_seed(0)
    model = build_cell_model(cfg, spec, ShardSet(cfg["shards"]), train)
    if finetuned:
        payload = torch.load(
            cell / "checkpoints" / "last.pt", map_location="cpu", weights_only=False
        )
        model.load_state_dict(payload["model"])
    return cfg, model, train


def datasets(cfg: dict[str, Any], train: ShardSet) -> tuple[TaskDataset, TaskDataset]:
    spec, size = task_spec(cfg["task"]), cfg["finetune"].get("data_size")
    test = ShardSet(cfg["shards"]).split("test")
    return (
        TaskDataset(spec, train, augment=False, data_size=size),
        TaskDataset(spec, test, augment=False, data_size=size),
    )


def finetuned_routing(cell: Path) -> dict[str, Any]:
    """Test mAP as configured and at no-drop capacity, with the routing of each."""
    cfg, model, train = load_cell(cell, finetuned=True)
    settings, spec = cfg["finetune"], task_spec(cfg["task"])
    train_set, test_set = datasets(cfg, train)
    dtype = job_precision(settings.get("amp", "bf16"), torch.device("cpu")).dtype
    out: dict[str, Any] = {"finetune": json.loads((cell / "metrics.json").read_text())["mAP_micro"]}
    layers = moe_layers(model)
    if not layers:
        return out
    configured = layers[0].capacity_factor
    for name, factor in (("eval", configured), ("eval_nodrop", NO_DROP)):
        set_capacity_factor(model, factor)
        recorder = RoutingRecorder(layers)
        scores = evaluate(
            model, spec, test_set, int(settings["eval_batch_size"]), torch.device("cpu"), dtype
        )
        out[f"{name}_mAP"], out[f"{name}_routing"] = scores["mAP_micro"], recorder.close()
    set_capacity_factor(model, configured)
    recorder = RoutingRecorder(layers)
    model.train()
    loader = DataLoader(train_set, batch_size=int(settings["batch_size"]), collate_fn=collate)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
        for batch in loader:
            model(batch["inputs"])
    out["train_routing"] = recorder.close()
    return out


def pooled_features(model: nn.Module, dataset: TaskDataset) -> tuple[np.ndarray, np.ndarray]:
    """Global-average-pooled final features (the classification head's input) and targets."""
    captured: list[np.ndarray] = []
    hook = model.head.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].float().mean((2, 3)).numpy())
    )
    targets = []
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=16, collate_fn=collate):
            model(batch["inputs"])
            targets.append(batch["target"].numpy())
    hook.remove()
    return np.concatenate(captured), np.concatenate(targets).round()


def linear_probe(cell: Path) -> dict[str, float]:
    """Test mAP of per-class logistic regressions on the pretrained encoder's features."""
    cfg, model, train = load_cell(cell, finetuned=False)
    train_set, test_set = datasets(cfg, train)
    factors = {"probe": None}
    if moe_layers(model):
        factors["probe_nodrop"] = NO_DROP
    out = {}
    for name, factor in factors.items():
        if factor is not None:
            set_capacity_factor(model, factor)
        x_train, y_train = pooled_features(model, train_set)
        x_test, y_test = pooled_features(model, test_set)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        scores = np.empty_like(y_test, dtype=np.float64)
        for k in range(y_train.shape[1]):
            if y_train[:, k].min() == y_train[:, k].max():  # one class only: its prior
                scores[:, k] = y_train[:, k].mean()
                continue
            probe = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y_train[:, k])
            scores[:, k] = probe.predict_proba(x_test)[:, 1]
        out[name] = multilabel_map(scores, y_test)["mAP_micro"]
    return out


def cells(results: Path, inits: list[str]) -> Iterator[tuple[str, str, Path]]:
    for init in inits:
        root = results / "finetune" / "bigearthnet" / init / "stacked"
        for cell in sorted(root.glob("frac*/seed*")):
            if (cell / "metrics.json").exists():
                yield init, cell.parent.name, cell


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [scale * v for v in values]
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one line per init and fraction, mean ± std over its seeds."""
    lines = [
        "| init | fraction | seeds | finetune mAP | eval no-drop mAP | probe mAP | probe no-drop "
        "| eval dropped % | train dropped % | eval load entropy | train noise flips % |",
        "|" + "---|" * 11,
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows.values():
        groups.setdefault((row["init"], row["fraction"]), []).append(row)
    for (init, fraction), group in groups.items():

        def col(key: str, scale: float = 1.0, group: list = group) -> str:
            if key not in group[0]:
                return "–"
            return mean_std([r[key] for r in group], scale)

        def routing(key: str, field: str, scale: float = 1.0, group: list = group) -> str:
            """Mean over the MoE layers, then mean ± std over seeds."""
            if key not in group[0]:
                return "–"
            layers = [[layer[field] for layer in r[key]] for r in group]
            return mean_std([float(np.mean(v)) for v in layers], scale, 1 if scale > 1 else 2)

        lines.append(
            f"| {init} | {fraction} | {len(group)} | {col('finetune')} | {col('eval_nodrop_mAP')}"
            f" | {col('probe')} | {col('probe_nodrop')} | {routing('eval_routing', 'dropped', 100)}"
            f" | {routing('train_routing', 'dropped', 100)}"
            f" | {routing('eval_routing', 'entropy')}"
            f" | {routing('train_routing', 'noise_flips', 100)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the workflow's results_root")
    parser.add_argument("--inits", nargs="+", default=["t6_dense_self", "t6_moe_self"])
    parser.add_argument("--json", type=Path, help="also write every cell's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for init, fraction, cell in cells(args.results, args.inits):
        key = f"{init}/{fraction}/{cell.name}"
        rows[key] = {
            "init": init,
            "fraction": fraction.removeprefix("frac"),
            **finetuned_routing(cell),
            **linear_probe(cell),
        }
        print(key, json.dumps(rows[key]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
