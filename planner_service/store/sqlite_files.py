"""SQLite file checks and backups: a store that is damaged is refused at start-up, not served.

Why before opening: SQLite opens a zero-length file as a new empty database and only notices damaged
pages when a query reads them, so a damaged store would start, report ready and fail every data route.
`check_sqlite_file` refuses a zero-length, truncated or foreign file and a failed `PRAGMA quick_check`
with one line naming the file; `backup_sqlite` copies a live store with SQLite's online backup API
(consistent while the service writes).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from planner_service.store.records import StoreError

SQLITE_HEADER = b"SQLite format 3\x00"
HEADER_BYTES = 100
"""A SQLite file starts with a 100-byte header (magic string, page size, page count)."""


def check_sqlite_file(path: Path) -> None:
    """Raise `StoreError` (one line, naming the file) unless `path` is absent or a healthy SQLite database."""
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"the plan store {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(f"the plan store {path} is an empty (zero-length) file, not a database; remove it to "
                         "start a new store or restore a backup")  # fmt: skip
    with path.open("rb") as f:
        header = f.read(HEADER_BYTES)
    if not header.startswith(SQLITE_HEADER):
        raise StoreError(f"the plan store {path} is not a SQLite database; point HELIX_DB elsewhere")
    if len(header) < HEADER_BYTES:
        raise StoreError(f"the plan store {path} is truncated ({size} bytes); restore it from a backup")
    problem = quick_check(path)
    if problem is not None:
        raise StoreError(f"the plan store {path} is damaged ({problem}); restore it from a backup "
                         "(helix store restore)")  # fmt: skip


def quick_check(path: Path) -> str | None:
    """None when `PRAGMA quick_check` passes, else its first finding in one line."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        return _one_line(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return _one_line(exc)
    finally:
        conn.close()
    findings = [str(r[0]) for r in rows]
    if findings == ["ok"]:
        return None
    more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
    return f"quick_check: {_one_line(findings[0])}{more}"


def backup_sqlite(source: Path, dest: Path) -> int:
    """Copy a (possibly live) store to `dest` with the online backup API; return the pages copied.

    The destination must not exist (a backup never overwrites), and is checked like any store afterwards.
    """
    check_sqlite_file(source)
    if not source.exists():
        raise StoreError(f"the plan store {source} does not exist")
    if dest.exists():
        raise StoreError(f"the backup target {dest} already exists; choose a new file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=256)
        pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {source} to {dest} failed: {_one_line(exc)}") from exc
    finally:
        dst.close()
        src.close()
    check_sqlite_file(dest)
    return pages


def restore_sqlite(backup: Path, target: Path) -> int:
    """Restore a backup into `target` (which must not be in use by a running service): the backup is checked,
    copied with the backup API to a temporary file beside `target`, then moved over it atomically."""
    check_sqlite_file(backup)
    if not backup.exists():
        raise StoreError(f"the backup {backup} does not exist")
    staging = target.with_name(target.name + ".restoring")
    staging.unlink(missing_ok=True)
    pages = backup_sqlite(backup, staging)
    for suffix in ("-wal", "-shm"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    staging.replace(target)
    return pages


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())
