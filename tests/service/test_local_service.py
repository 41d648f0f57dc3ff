"""`LocalService` (the planner as a child process for `make demo`, tests and benches): a service that cannot
start is reported with its own one-line reason, not only an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner_service.local_service import LocalService


@pytest.mark.timeout(120)
def test_a_service_that_cannot_start_reports_why(tmp_path: Path) -> None:
    db = tmp_path / "planner.db"
    db.write_bytes(b"not a SQLite database, certainly not a plan store" * 100)
    service = LocalService(db, log_file=tmp_path / "planner.log")
    with pytest.raises(RuntimeError, match=r"exited with code 2 at start-up: error: .*planner\.db"):
        service.start()
    assert not service.running
