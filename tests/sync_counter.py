"""``HostSyncCounter``: count the ops that make the host wait for the device.

A CUDA step queues kernels and returns; an op whose result the host must read (a scalar for
Python, a shape that depends on values) blocks until the queue drains, so the CPU can no
longer run ahead. Counting these ops on CPU finds the same places without a GPU.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that read a value back (a scalar, or a result whose size depends on the data).
SYNC_OPS = frozenset(
    {
        aten._local_scalar_dense.default,
        aten.item.default,
        aten.nonzero.default,
        aten.masked_select.default,
        aten.bincount.default,
        aten.unique_consecutive.default,
        aten.unique_dim.default,
        aten._unique.default,
        aten._unique2.default,
    }
)


def _syncs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call must read device data on the host to finish."""
    if func in SYNC_OPS:
        return True
    if func is aten.index.Tensor:
        return _has_bool_index(args)
    # Tensor repeats give an output whose length is their sum, unless the caller says it.
    return func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None


def _has_bool_index(args: tuple[Any, ...]) -> bool:
    """aten.index.Tensor with a boolean index: the result's length is the mask's count."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


# (file suffix, function): torch's optimisers read their step count with .item(), but it is a
# CPU tensor on every device unless the optimiser is capturable or fused, so on a GPU that read
# never waits for the device. Counted on CPU like any other read unless a test ignores it.
OPTIMIZER_STEP_COUNT = ("torch/optim/optimizer.py", "_get_value")


def _called_from(sites: Collection[tuple[str, str]]) -> bool:
    """Whether a frame of the current stack is one of ``sites`` (file suffix, function)."""
    return any(
        frame.filename.endswith(path) and frame.name == name
        for frame in traceback.extract_stack()
        for path, name in sites
    )


def _caller() -> str:
    """``file:line`` of the innermost msgfm frame: where a sync comes from, for the report."""
    package = str(Path(__file__).resolve().parents[1] / "msgfm")
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(package)]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


class HostSyncCounter(TorchDispatchMode):
    """Records every host-syncing op dispatched inside the ``with`` block, by op name
    (``calls``) and by the msgfm line that issued it (``sites``); reads made inside one of
    ``ignored`` (file suffix, function) are left out (e.g. :data:`OPTIMIZER_STEP_COUNT`)."""

    def __init__(self, ignored: Collection[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.ignored = tuple(ignored)
        self.calls: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs) and not _called_from(self.ignored):
            self.calls[str(func)] += 1
            self.sites[_caller()] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.calls.values())
