"""What a tiling run did: counts, source bytes, repaired pixels and skipped files.

The report is stored in the shard set's meta.json and returned to the workflow, so a user can
see (and the benchmarks can time) exactly what went into a shard set: how many files and
megabytes were read, how many SAR pixels were NaN or physically impossible and set to 0 dB
(per file), and which samples were skipped and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.data.sensors import SAR_DB_PLAUSIBLE
from msgfm.errors import DataError

log = logging.getLogger(__name__)

# A few unreadable patches in 180k are real life; many mean a broken extraction.
MAX_SKIPPED_FRACTION = 0.01


class TilingReport:
    """Accumulates the figures of one tiling run; ``as_dict`` is what meta.json stores."""

    def __init__(self, source: str, data_root: Path, out_dir: Path) -> None:
        self.source = source
        self.data_root = Path(data_root)
        self.out_dir = Path(out_dir)
        self.started = time.perf_counter()
        self.samples = 0
        self.files_read = 0
        self.source_bytes = 0
        self.nonfinite_by_file: dict[str, int] = {}
        self.implausible_by_file: dict[str, int] = {}
        self.skipped: list[dict[str, str]] = []

    def relative(self, path: Path) -> str:
        """A source path relative to the data root, so the index survives a moved root."""
        try:
            return str(Path(path).relative_to(self.data_root))
        except ValueError:
            return str(path)

    def origin(self, ref: SampleRef) -> list[str]:
        return [self.relative(p) for paths in ref.files.values() for p in paths]

    def count_read(self, ref: SampleRef) -> None:
        for paths in ref.files.values():
            for path in paths:
                self.files_read += 1
                self.source_bytes += Path(path).stat().st_size

    def repair_sar(self, array: np.ndarray, paths: Sequence[Path]) -> int:
        """Set SAR no-data (NaN/inf) and impossible σ0 to 0 dB in place, counted per file.

        Impossible means outside ``SAR_DB_PLAUSIBLE`` (a float32 fill of 3e38 dB, say): such
        a pixel would dominate any statistic and clip to an extreme once normalised. ``paths``
        are the files the array came from: one multi-band file, or one file per band
        (BigEarthNet's VV and VH), so each count lands on the file that holds the pixels.
        """
        low, high = SAR_DB_PLAUSIBLE
        parts = list(zip(array, paths, strict=True)) if len(paths) > 1 else [(array, paths[0])]
        total = 0
        for part, path in parts:
            nonfinite = ~np.isfinite(part)
            with np.errstate(invalid="ignore"):
                implausible = (part < low) | (part > high)
            key = self.relative(path)
            for mask, counts, what in (
                (nonfinite, self.nonfinite_by_file, "non-finite"),
                (implausible, self.implausible_by_file, f"outside {low:g}..{high:g} dB"),
            ):
                count = int(np.count_nonzero(mask))
                if count:
                    part[mask] = 0.0
                    counts[key] = counts.get(key, 0) + count
                    log.info("%s: %d %s pixel(s) set to 0 dB", key, count, what)
                total += count
        return total

    def read_all(self, reader: DatasetReader) -> Iterator[tuple[SampleRef, Sample]]:
        """Read every sample of ``reader`` in order, recording unreadable ones as skipped."""
        for ref in reader.refs:
            try:
                sample = reader.read(ref)
            except DataError as exc:
                self.skipped.append({"sample_id": ref.sample_id, "file": str(exc.path),
                                     "reason": exc.problem})  # fmt: skip
                log.warning("skipping %s: %s", ref.sample_id, exc)
                continue
            self.count_read(ref)
            yield ref, sample
        self.check_skipped(len(reader.refs))

    def check_skipped(self, total: int) -> None:
        if total and len(self.skipped) > MAX_SKIPPED_FRACTION * total:
            first = self.skipped[0]
            raise DataError(
                first["file"],
                f"{len(self.skipped)} of {total} {self.source} samples unreadable (more than "
                f"{MAX_SKIPPED_FRACTION:.0%}); first: {first['reason']}. Re-extract the archives.",
            )

    def as_dict(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        megabytes = self.source_bytes / 1e6
        return {
            "source": self.source,
            "samples": self.samples,
            "files_read": self.files_read,
            "source_mb": round(megabytes, 3),
            "seconds": round(seconds, 3),
            "source_mb_per_s": round(megabytes / seconds, 3) if seconds > 0 else None,
            "nonfinite_repaired": sum(self.nonfinite_by_file.values()),
            "nonfinite_by_file": self.nonfinite_by_file,
            "implausible_repaired": sum(self.implausible_by_file.values()),
            "implausible_by_file": self.implausible_by_file,
            "skipped": self.skipped,
        }
