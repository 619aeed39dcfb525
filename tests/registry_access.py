"""pip and apt-get calls for tests that fetch packages: skipped when the registry is out of
reach, failed when the installer itself fails, so a missing network never reads as a broken
project and vice versa."""

from __future__ import annotations

import os
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
# apt-get output that means Debian's mirror could not be reached.
APT_UNREACHABLE = (
    "Temporary failure resolving",
    "Could not resolve",
    "Could not connect to",
    "Unable to connect to",
    "Connection timed out",
    "Network is unreachable",
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


def apt_install_or_skip(packages: Sequence[str], what: str) -> None:
    """``apt-get install`` ``packages`` (after ``apt-get update``: a fresh machine has no
    package lists); skip the test if Debian's mirror is unreachable."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    for command in (["apt-get", "update"], install):
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"Debian's mirror did not answer within {PIP_TIMEOUT_S} s ({what})")
        output = done.stdout + done.stderr
        # apt-get update only warns (exit 0) when a mirror is out of reach.
        if any(marker in output for marker in APT_UNREACHABLE):
            pytest.skip(f"Debian's mirror unreachable, cannot fetch {what}")
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed for {what}:\n{output[-3000:]}")
