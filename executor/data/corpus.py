"""A training corpus on disk: a directory of text files, a JSONL file of texts, or a JSONL file of token ids.

Documents keep their own lengths (that skew is what HelixTrain plans for), in a fixed order (sorted relative
paths, or file order for JSONL) so every rank and every node sees the same corpus. Problems a user can cause
(no such path, an empty corpus, a malformed line) are `CorpusError`s naming the path and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SKIPPED_DIRECTORIES = frozenset({"__pycache__", ".git", ".hg", ".svn", "node_modules", ".helix-cache"})
"""Folders never read as documents (caches and version-control metadata)."""
TEXT_FIELDS = ("text",)
"""JSONL keys holding a document's text."""
ID_FIELDS = ("input_ids", "ids", "tokens")
"""JSONL keys holding a pre-tokenised document (a list of token ids)."""
BINARY_SNIFF_BYTES = 8192
"""A file whose first bytes contain a NUL byte is binary, not text (the heuristic git and grep use)."""


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the path (and line) and the fix."""


class CorpusKind(str, Enum):
    DIRECTORY = "directory"
    """Every readable UTF-8 text file below a folder is one document."""
    JSONL_TEXT = "jsonl-text"
    """One JSON object per line with a `text` field."""
    JSONL_IDS = "jsonl-ids"
    """One JSON object per line with an `input_ids` (or `ids`, `tokens`) list of token ids."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Corpus:
    """Where the documents are and how to read them."""

    path: Path
    kind: CorpusKind
    files: tuple[Path, ...]
    """The files read, in document order (one file for JSONL)."""

    @property
    def is_tokenized(self) -> bool:
        return self.kind is CorpusKind.JSONL_IDS

    def fingerprint(self) -> str:
        """Changes whenever a file is added, removed, resized or rewritten (path, size, mtime)."""
        digest = hashlib.sha256(str(self.kind).encode())
        for f in self.files:
            stat = f.stat()
            digest.update(f"{f.relative_to(self.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def root(self) -> Path:
        return self.path if self.kind is CorpusKind.DIRECTORY else self.path.parent

    def texts(self) -> Iterator[str]:
        """Document texts in order (a tokenised corpus has none: use `token_ids`)."""
        if self.kind is CorpusKind.DIRECTORY:
            for f in self.files:
                text = _read_text(f)
                if text:
                    yield text
        elif self.kind is CorpusKind.JSONL_TEXT:
            for lineno, record in _jsonl_records(self.path):
                value = _field(record, TEXT_FIELDS, self.path, lineno)
                if not isinstance(value, str):
                    raise CorpusError(f"{self.path}:{lineno}: field 'text' must be a string")
                if value:
                    yield value
        else:
            raise CorpusError(f"{self.path} holds token ids, not text")

    def token_ids(self) -> Iterator[list[int]]:
        """Pre-tokenised documents in order (only for a JSONL file of ids)."""
        if self.kind is not CorpusKind.JSONL_IDS:
            raise CorpusError(f"{self.path} holds text, not token ids")
        for lineno, record in _jsonl_records(self.path):
            ids = _field(record, ID_FIELDS, self.path, lineno)
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise CorpusError(f"{self.path}:{lineno}: the token ids must be a list of integers")
            if any(t < 0 for t in ids):
                raise CorpusError(f"{self.path}:{lineno}: token ids must be non-negative")
            if ids:
                yield ids


def open_corpus(path: str | os.PathLike[str]) -> Corpus:
    """Recognise the corpus at `path` (a folder of text files, or a `.jsonl`/`.json` file of texts or ids)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CorpusError(f"corpus {p} does not exist (give a folder of text files or a .jsonl file)")
    if p.is_dir():
        files = tuple(_text_files(p))
        if not files:
            raise CorpusError(f"corpus {p} has no readable text files")
        return Corpus(p.resolve(), CorpusKind.DIRECTORY, files)
    if p.suffix not in (".jsonl", ".json"):
        raise CorpusError(f"corpus {p} is a file but not .jsonl: give a folder of text files or a .jsonl file")
    first = next(_jsonl_records(p), None)
    if first is None:
        raise CorpusError(f"corpus {p} is empty")
    _, record = first
    if any(k in record for k in ID_FIELDS):
        kind = CorpusKind.JSONL_IDS
    elif any(k in record for k in TEXT_FIELDS):
        kind = CorpusKind.JSONL_TEXT
    else:
        raise CorpusError(
            f"{p}:1: a JSONL corpus needs a 'text' field (or 'input_ids' for token ids); found {sorted(record)}"
        )
    return Corpus(p.resolve(), kind, (p.resolve(),))


def _text_files(root: Path) -> Iterator[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRECTORIES and not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            f = Path(dirpath) / name
            if f.is_file() and not f.is_symlink() and _looks_like_text(f):
                found.append(f)
    found.sort(key=lambda f: f.relative_to(root).as_posix())
    return iter(found)


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(BINARY_SNIFF_BYTES)
    except OSError:
        return False
    return bool(head) and b"\0" not in head


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8; undecodable bytes become U+FFFD rather than dropping the document."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield lineno, _json_object(line, path, lineno)
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path} is not UTF-8 text ({exc.reason})") from None


def _json_object(line: str, path: Path, lineno: int) -> dict[str, object]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{path}:{lineno}: each line must be a JSON object")
    return record


def _field(record: dict[str, object], keys: tuple[str, ...], path: Path, lineno: int) -> object:
    for key in keys:
        if key in record:
            return record[key]
    raise CorpusError(f"{path}:{lineno}: missing field {keys[0]!r}")
