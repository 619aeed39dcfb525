"""Snakemake's config validation error in one line (the Snakefile's ``validate``).

Its own message is followed by the whole schema (~2,500 lines for ours), which buries the key
at fault. Kept apart from msgfm.config_checks because it needs Snakemake, which the jobs that
reuse those checks (the tilers) do not have.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def schema_errors_in_one_line() -> Iterator[None]:
    """Turn Snakemake's schema error, which prints the whole schema after the message, into
    one line naming the key and what was expected."""
    from jsonschema import ValidationError
    from snakemake.exceptions import WorkflowError

    try:
        yield
    except WorkflowError as error:
        cause = error.__context__  # Snakemake raises it while handling jsonschema's error
        if not isinstance(cause, ValidationError):
            raise
        key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
        raise WorkflowError(f"config {key}: {cause.message}") from None
