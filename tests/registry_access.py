"""pip calls for tests marked ``network``: skipped when the registry is out of reach, failed
when pip itself fails, so a missing network never reads as a broken project and vice versa."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from os import PathLike

import pytest

PIP_TIMEOUT_S = 300
# pip output that means the registry could not be reached (as opposed to a real failure).
UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Could not fetch URL",
)


def run_pip_or_skip(command: Sequence[str | PathLike[str]], what: str) -> None:
    """Run a pip ``command`` fetching ``what``; skip the test if the registry is unreachable."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"package registry did not answer within {PIP_TIMEOUT_S} s ({what})")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        if any(marker in output for marker in UNREACHABLE):
            pytest.skip(f"package registry unreachable, cannot fetch {what}")
        pytest.fail(f"pip could not fetch {what}:\n{output[-3000:]}")
