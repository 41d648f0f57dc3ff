"""Real, skewed sequence lengths available on every machine: the Python standard library's source files.

Why: demos and smoke tests need a *real* length distribution (many short files, a few very long ones) without
downloading a corpus. Every Python installation ships one. Each ``.py`` file under
``sysconfig.get_paths()["stdlib"]`` is one sequence; its length in tokens is ``ceil(bytes / 4)``, the usual
rule of thumb of ~4 bytes of English/code text per BPE token (no tokenizer needed, so it is exact and
reproducible). ``site-packages``/``dist-packages`` (third-party code) and ``__pycache__`` are skipped, as are
empty files (e.g. empty ``__init__.py``) and files that cannot be opened. The order is deterministic: sorted by
path relative to the stdlib root, so the same Python version gives the same list on every machine.
"""

from __future__ import annotations

import math
import os
import sysconfig

BYTES_PER_TOKEN = 4
"""Approximate bytes of source text per BPE token."""

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_source_files(root: str | os.PathLike[str] | None = None) -> list[tuple[str, int]]:
    """(path, size in bytes) of the non-empty ``.py`` files under ``root`` (default: this Python's stdlib),
    sorted by path relative to the root; unreadable files are skipped."""
    base = os.fspath(root) if root is not None else sysconfig.get_paths()["stdlib"]
    found: list[tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            path = os.path.join(dirpath, filename)
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
            except OSError:
                continue
            if size > 0:
                found.append((os.path.relpath(path, base).replace(os.sep, "/"), path, size))
    found.sort()
    return [(path, size) for _, path, size in found]


def stdlib_lengths(root: str | os.PathLike[str] | None = None) -> list[int]:
    """Token counts (``ceil(bytes / 4)``) of the ``.py`` files under ``root`` (default: this Python's stdlib).

    Sorted by relative path; unreadable and empty files are skipped.
    """
    return [math.ceil(size / BYTES_PER_TOKEN) for _, size in stdlib_source_files(root)]
