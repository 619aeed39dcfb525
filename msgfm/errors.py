"""Exceptions that carry enough context for a user to fix the problem without a debugger."""

from __future__ import annotations

from pathlib import Path


class MsgfmError(Exception):
    """Base class of the errors this package raises on purpose."""


class DataError(MsgfmError):
    """A data file or folder is missing, malformed or inconsistent.

    The message always names the offending path and what was expected, because the user
    who sees it is usually staring at a half-extracted archive on a cluster.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ChecksumError(DataError):
    """A downloaded or placed file does not match its published checksum."""


class ManualDownloadRequired(DataError):
    """A source cannot be fetched automatically (login, form, drive link, AWS CLI)."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the extraction folder or is not a plain file/folder."""


class UnknownNameError(MsgfmError, KeyError):
    """A name that no registry of the package knows (a dataset, ...); the message lists the
    known ones. Still a KeyError for callers, but printed by the CLI as one line."""

    __str__ = Exception.__str__  # KeyError's would quote the whole message


class OptionError(MsgfmError, TypeError):
    """A setting a registry entry does not take, or of the wrong type (a tiler option, ...);
    the message names the key and what was expected. Still a TypeError for callers, as an
    unexpected keyword argument would be."""
