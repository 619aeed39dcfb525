"""HostSyncCounter: records the ops of a block of code that make the host wait for the device.

On a GPU, an op whose result the host must read (a Python scalar, a data-dependent output
shape) blocks the CPU until the device has caught up, so it can no longer queue work ahead; under
``torch.compile(fullgraph=True)`` the same op is a graph break. On CPU nothing waits, but the
same ops pass through the dispatcher, so counting them on CPU finds the syncs a GPU would have.

Blind spot: reading a CPU tensor's memory directly (``.tolist()``, ``.numpy()``) skips the
dispatcher, so on CPU only the ops around it are seen; on a GPU the same read is a copy to
the CPU, which is recorded.
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

# Ops that return a host value or whose output shape depends on the data.
HOST_READS = frozenset(
    {
        aten._local_scalar_dense,
        aten.item,
        aten.is_nonzero,
        aten.equal,
        aten.nonzero,
        aten.masked_select,
        aten.bincount,
        aten.nonzero_numpy,
        aten._unique,
        aten._unique2,
        aten.unique_dim,
        aten.unique_consecutive,
        aten.unique_dim_consecutive,
    }
)
# Ops that read the host only when indexed by a boolean mask (converted with nonzero).
MASK_INDEXED = frozenset(
    {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index}
)
# repeat_interleave with tensor repeats sizes its output by their sum, unless given output_size.
COUNTED_REPEATS = frozenset({aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor})


def _device_type(value: Any) -> str | None:
    """The device type of a tensor or device argument; None for anything else."""
    if isinstance(value, torch.Tensor):
        return value.device.type
    if isinstance(value, torch.device | str):
        return torch.device(value).type
    return None


def _mask_indexed(args: tuple[Any, ...]) -> bool:
    """Whether an index op's indices (its second argument) include a boolean mask."""
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
        for index in indices or ()
    )


def _copies_to_host(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A device tensor copied to the CPU (``.cpu()``, ``.tolist()`` of a GPU tensor)."""
    if func.overloadpacket is aten._to_copy:
        target = _device_type(kwargs.get("device"))
        return target == "cpu" and _device_type(args[0]) != "cpu"
    if func.overloadpacket is aten.copy_:
        return _device_type(args[0]) == "cpu" and _device_type(args[1]) not in ("cpu", None)
    return False


def reads_host(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this aten call makes the host wait for the device's result."""
    packet = func.overloadpacket
    if packet in HOST_READS:
        return True
    if func in COUNTED_REPEATS:
        return kwargs.get("output_size") is None
    if packet in MASK_INDEXED:
        return _mask_indexed(args)
    return _copies_to_host(func, args, kwargs)


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
    """Within ``with HostSyncCounter() as counter:``, ``counter.calls`` lists every host read
    by aten op name in call order and ``counter.sites`` counts them by the msgfm line that
    issued them; reads made inside one of ``ignored`` (file suffix, function) are left out
    (e.g. :data:`OPTIMIZER_STEP_COUNT`). Backward passes run inside the block are counted too
    (autograd carries the mode to its engine)."""

    def __init__(self, ignored: Collection[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.ignored = tuple(ignored)
        self.calls: list[str] = []
        self.sites: Counter[str] = Counter()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if reads_host(func, args, kwargs) and not _called_from(self.ignored):
            self.calls.append(str(func))
            self.sites[_caller()] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return len(self.calls)
