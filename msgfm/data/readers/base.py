"""What every dataset reader returns, so tilers and tests handle all datasets alike.

A reader scans a dataset's real on-disk layout once (fast: file names only), exposes the
samples it found as lightweight :class:`SampleRef` records, and reads one on demand into a
:class:`Sample` whose arrays are keyed by role ("s2", "sar", "rgb", "dsm", "label", ...)
with bands in the canonical order of ``msgfm.data.sensors``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.errors import DataError


@dataclass(frozen=True)
class SampleRef:
    """A sample located on disk but not yet read: its id, split and source files by role."""

    sample_id: str
    files: dict[str, tuple[Path, ...]]
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """A read sample: arrays by role, per-band validity masks, and metadata (labels, ...)."""

    sample_id: str
    arrays: dict[str, np.ndarray]
    valid_bands: dict[str, np.ndarray] = field(default_factory=dict)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class DatasetReader:
    """Base class: subclasses fill ``self.refs`` in ``__init__`` and implement ``read``.

    Subclasses document in their docstring where the data comes from, its layout, bands
    and citation (torchgeo's habit), and raise :class:`DataError` naming the folder and the
    expected layout when nothing matches.
    """

    name: str = "dataset"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, f"{self.name}: dataset folder not found")
        self.refs: list[SampleRef] = []

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[Sample]:
        for ref in self.refs:
            yield self.read(ref)

    def read(self, ref: SampleRef) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def require_samples(self, pattern: str) -> None:
        """Fail clearly when a scan found nothing: the usual sign of a misplaced archive."""
        if not self.refs:
            raise DataError(
                self.root,
                f"{self.name}: no samples found; expected files like {pattern} under this folder",
            )


def require_disjoint_splits(listed: dict[Path, Sequence[str]], *, shown: int = 3) -> None:
    """Refuse split lists that name a patch twice, in one list or in two.

    A repeated line tiles a patch twice (two rows with one ``sample_id``); a patch in both
    train and test leaks test data into finetuning, and the paper's downstream numbers
    (Tables 3-6) would no longer measure transfer. ``listed`` maps each split file to the
    names it lists, in file order; the error names the file(s) and the first ``shown`` names.
    """
    seen_in: dict[str, Path] = {}
    for path, names in listed.items():
        counts = Counter(names)
        repeated = list(dict.fromkeys(name for name in names if counts[name] > 1))
        if repeated:
            raise DataError(
                path,
                f"{len(repeated)} patch(es) listed more than once, first: "
                f"{', '.join(repeated[:shown])}; expected each patch once",
            )
        shared = [name for name in names if name in seen_in]
        if shared:
            raise DataError(
                path,
                f"{len(shared)} patch(es) also listed in {seen_in[shared[0]]}, first: "
                f"{', '.join(shared[:shown])}; expected every patch in one split only",
            )
        seen_in.update(dict.fromkeys(names, path))
