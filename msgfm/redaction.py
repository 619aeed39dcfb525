"""Credentials out of everything the project records: MLflow params, tags and artifacts, and
its log lines.

A mirror or a tracking server may be reached through a URL that carries a user and password
(``https://user:pw@host/``, ``postgresql://mlflow:pw@db/mlflow``) or a signed link's secret in
its query (``?token=…``, S3's ``X-Amz-Signature``, Azure's ``sig``). The config keeps the URL as
given, because the download needs it; whatever leaves the process to be kept (the tracking store,
a log) goes through :func:`redact`, which keeps the URL readable (scheme, host, path, the other
parameters) and puts :data:`MASK` in place of each secret.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# Query parameters that hold a secret, by a word in their name (case-insensitive): token,
# access_token, X-Amz-Security-Token, key, api_key, secret, client_secret, password, passwd,
# pwd, signature, X-Amz-Signature, X-Goog-Signature, X-Amz-Credential, auth, Azure's sig.
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|signature|credential|auth|^sig$", re.I)
# A URL inside free text (a command line, a log line, a JSON dump): up to a space or a quote.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _redact_query(query: str) -> str:
    """``a=1&token=x`` -> ``a=1&token=***``; every other byte as it was."""
    pairs = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        secret = equals and value and _SECRET_PARAM.search(unquote(name))
        pairs.append(f"{name}={MASK}" if secret else pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and its secret query (and fragment) parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all (e.g. an unbalanced "[" in the host)
        return url
    userinfo, at, host = parts.netloc.rpartition("@")
    masked = parts._replace(
        netloc=f"{MASK}@{host}" if at and userinfo else parts.netloc,
        query=_redact_query(parts.query),
        fragment=_redact_query(parts.fragment),
    )
    # Rebuilt only when something was masked: a round trip rewrites some URLs (sqlite:////a).
    return url if masked == parts else urlunsplit(masked)


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (:func:`redact_url`), the rest unchanged."""
    return _URL.sub(lambda match: redact_url(match.group()), text)


def redact(value: Any) -> Any:
    """A config (nested mappings and lists) or a string with every URL in it redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts each record's message before any handler writes it (installed by the CLI on its
    handlers, so that a URL passed to a log call as an argument is masked too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        return True


def print_redacted_traceback(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """``sys.excepthook`` of the CLI: the traceback of an error nobody caught, every URL in it
    redacted (MLflow's error for an unreachable server names its URL, password included)."""
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, error, trace))))
