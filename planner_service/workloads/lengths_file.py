"""Read a sequence-length file: one positive integer (tokens) per line.

Why this format: it is what a data pipeline can dump in one pass over a tokenised corpus, it diffs and greps
well, and a million lines stay a few megabytes. Real files are large (``shared/data/wikipedia-lengths.txt`` has
1,000,000 lines), so the common case — a clean file — takes a vectorised fast path; only a file that fails it is
walked line by line to name the first bad line. Nothing is cached: the caller owns the result.
"""

from __future__ import annotations

import os
import re

_WHITESPACE = b" \t\r\n"
_ALLOWED = b"0123456789" + _WHITESPACE
_BLANK_LINE = re.compile(rb"(?:^|\n)[ \t\r]*(?:\n|$)")
_SNIPPET_CHARS = 40
MAX_LENGTH = 2**63 - 1
"""Largest length a file may hold: lengths are sampled and summed as 64-bit integers."""


class WorkloadError(ValueError):
    """A workload the user supplied (file, dataset name, batch options) cannot be used; the message says why."""


def _fast_parse(data: bytes) -> list[int] | None:
    """Values of a clean file (digits only, one number per line, none zero), else None."""
    if data.translate(None, _ALLOWED):
        return None
    if _BLANK_LINE.search(data):
        return None
    tokens = data.split()
    if len(tokens) != data.count(b"\n") + 1:  # no blank lines, so equal counts mean one number per line
        return None
    values = list(map(int, tokens))
    if min(values) < 1 or max(values) > MAX_LENGTH:
        return None
    return values


def _describe(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if len(text) > _SNIPPET_CHARS:
        text = text[:_SNIPPET_CHARS] + "..."
    return repr(text)


def _first_error(path: str, data: bytes) -> WorkloadError:
    """Walk the lines to find the first offending one; the fast path has already rejected the file."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        s = raw.strip()
        if not s:
            return WorkloadError(f"{path}:{lineno}: blank line; expected one positive integer per line")
        if s.isdigit():
            if int(s) == 0:
                return WorkloadError(f"{path}:{lineno}: length must be a positive integer, got 0")
            if int(s) > MAX_LENGTH:
                return WorkloadError(f"{path}:{lineno}: length {_describe(s)} exceeds the largest supported 2^63 - 1")
            continue
        if s[:1] == b"-" and s[1:].isdigit():
            return WorkloadError(f"{path}:{lineno}: length must be a positive integer, got {_describe(s)}")
        return WorkloadError(f"{path}:{lineno}: expected one positive integer per line, got {_describe(s)}")
    # Unreachable for a file the fast path rejected; kept so the function always returns an error.
    return WorkloadError(f"{path}: could not parse the file as one positive integer per line")


def read_lengths(path: str | os.PathLike[str]) -> list[int]:
    """Sequence lengths from ``path``, in file order.

    Surrounding whitespace on a line and blank lines at the end are accepted. Raises ``WorkloadError`` with a
    one-line message naming the file and line for: a missing/unreadable file, an empty file, a blank line
    between numbers, a non-integer, zero, or a negative number.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise WorkloadError(f"{name}: cannot read lengths file ({exc.strerror or exc})") from exc
    data = data.rstrip(_WHITESPACE)
    if not data:
        raise WorkloadError(f"{name}:1: file is empty; expected one positive integer per line")
    values = _fast_parse(data)
    if values is None:
        raise _first_error(name, data)
    return values
