"""`helix store check|backup|restore`: operate on a SQLite plan store from the command line.

`backup` uses SQLite's online backup API, so it is consistent while a service writes to the store;
`restore` checks the backup, copies it beside the target and moves it into place (stop the service first).
PostgreSQL stores are backed up with the database's own tools (`pg_dump`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner_service.store.dialects import POSTGRES_SCHEMES
from planner_service.store.records import StoreError
from planner_service.store.sqlite_files import backup_sqlite, check_sqlite_file, restore_sqlite

store_app = typer.Typer(name="store", help="Check, back up and restore a SQLite plan store.", no_args_is_help=True)


class StoreCommandError(StoreError):
    """A bad argument to a store command (printed as one line, exit code 2)."""


def _sqlite_path(location: str, what: str) -> Path:
    if location.startswith(POSTGRES_SCHEMES):
        raise StoreCommandError(f"{what}: {location.split('@')[-1]} is PostgreSQL; back it up with pg_dump")
    return Path(location)


@store_app.command("check")
def check_command(db: Annotated[str, typer.Argument(help="SQLite store file.")]) -> None:
    """Refuse (exit 2, one line) a store file that is empty, truncated, not SQLite, or fails PRAGMA quick_check."""
    path = _sqlite_path(db, "check")
    if not path.exists():
        raise StoreCommandError(f"the plan store {path} does not exist")
    check_sqlite_file(path)
    typer.echo(f"{path}: ok")


@store_app.command("backup")
def backup_command(
    db: Annotated[str, typer.Argument(help="SQLite store file (may be in use by a running service).")],
    dest: Annotated[Path, typer.Argument(help="New file to write the backup to.")],
) -> None:
    """Copy a live store with SQLite's online backup API (consistent while the service writes)."""
    pages = backup_sqlite(_sqlite_path(db, "backup"), dest)
    typer.echo(f"backed up {db} to {dest} ({pages} pages)")


@store_app.command("restore")
def restore_command(
    backup: Annotated[Path, typer.Argument(help="A backup written by `helix store backup`.")],
    db: Annotated[str, typer.Argument(help="The store file to replace (stop the service first).")],
) -> None:
    """Check a backup and put it in place of the store file (the old file and its WAL are replaced)."""
    pages = restore_sqlite(backup, _sqlite_path(db, "restore"))
    typer.echo(f"restored {backup} into {db} ({pages} pages)")


def register(app: typer.Typer) -> None:
    app.add_typer(store_app)
