"""A store that refuses damage: start-up checks, readiness that fails with the store, backups and restores.

Bugs guarded (issue 14): with damaged pages but an intact header the server started, `/readyz` said ready and
every data route answered 500; a zero-length file opened silently as a new empty store; a truncated file
exited with a 30-line traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from planner_service.api import create_app
from planner_service.cli import main
from planner_service.store import PlanRecord, PlanStore, StoreError
from tests.service.service_inputs import LENGTHS, SMALL_JOB, SettingsFactory

PAGE = 4096
SERVE_GUARD_S = 60.0
"""A broken build would start serving instead of refusing; the subprocess is stopped after this."""


def populated_store(path: Path, plans: int = 40) -> None:
    """A store with one job and `plans` plans of ~20 KB each (many pages), closed."""
    store = PlanStore(path)
    store.create_job("j1", {}, {"num_stages": 1})
    for step in range(plans):
        payload = os.urandom(10_000).hex().encode()  # incompressible: one plan spans several pages
        store.put_plan(
            PlanRecord.of_json(job_id="j1", step=step, batch_fingerprint="fp", plan_id="p", predicted_s=1.0,
                               plan_json=payload)
        )  # fmt: skip
    store.close()


def damage_pages(path: Path, first_page: int, count: int) -> None:
    with path.open("r+b") as f:
        f.seek(first_page * PAGE)
        f.write(b"\xa5" * PAGE * count)


def serve_refuses(db: Path) -> str:
    """Run `helix serve` on `db` in a subprocess; return its stderr (it must exit, not serve)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_")}
    proc = subprocess.run(
        [sys.executable, "-m", "planner_service.cli", "serve", "--port", "0", "--db", str(db)],
        capture_output=True, text=True, timeout=SERVE_GUARD_S, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(db) in lines[0]
    return lines[0]


def damaged(tmp_path: Path, kind: str) -> Path:
    db = tmp_path / f"{kind}.db"
    if kind == "zero-length":
        db.touch()
    elif kind == "not-sqlite":
        db.write_text("this is a text file, not a database\n" * 10)
    else:
        populated_store(db)
        if kind == "truncated":
            size = db.stat().st_size
            with db.open("r+b") as f:
                f.truncate(size // 3)
        elif kind == "damaged-pages":
            damage_pages(db, first_page=3, count=4)  # the header (page 1) stays intact
    return db


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("zero-length", "zero-length"), ("not-sqlite", "not a SQLite database"), ("truncated", "damaged"),
     ("damaged-pages", "damaged")],
)  # fmt: skip
def test_a_damaged_store_is_refused_at_start_up_in_one_line(tmp_path: Path, kind: str, needle: str) -> None:
    db = damaged(tmp_path, kind)
    with pytest.raises(StoreError, match=needle):
        PlanStore(db)
    assert needle in serve_refuses(db)


def test_readyz_fails_when_the_store_fails(tmp_path: Path, make_settings: SettingsFactory) -> None:
    """Pages damaged while the service runs: the data route answers 503 `store_unavailable` (not a 500) and
    readiness fails from then on, so a load balancer stops sending traffic."""
    db = tmp_path / "live.db"
    populated_store(db)
    with TestClient(create_app(make_settings(db)), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        damage_pages(db, first_page=2, count=(db.stat().st_size // PAGE) - 2)
        broken = client.get("/v1/jobs/j1/plans/30")
        assert broken.status_code == 503 and broken.json()["code"] == "store_unavailable", broken.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
        assert "malformed" in ready.json()["message"]


def test_backup_of_a_live_store_and_restore_over_a_damaged_one(
    tmp_path: Path, make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    db, backup = tmp_path / "plans.db", tmp_path / "backups" / "plans-1.db"
    with TestClient(create_app(make_settings(db))) as client:
        job = client.post("/v1/jobs", json=SMALL_JOB).json()["job_id"]
        plan = client.post(f"/v1/jobs/{job}/plans", json={"step": 0, "lengths": LENGTHS})
        assert plan.status_code == 200
        assert main(["store", "backup", str(db), str(backup)]) == 0  # while the service holds the store
        assert "backed up" in capsys.readouterr().out
        assert main(["store", "backup", str(db), str(backup)]) == 2  # never overwrites a backup
        assert "already exists" in capsys.readouterr().err
    shutil.copy(damaged(tmp_path, "damaged-pages"), db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert main(["store", "check", str(db)]) == 2
    assert main(["store", "restore", str(backup), str(db)]) == 0
    assert main(["store", "check", str(db)]) == 0
    with TestClient(create_app(make_settings(db))) as client:
        assert client.get(f"/v1/jobs/{job}/plans/0").content == plan.content
