"""`helix serve` refuses to expose an unauthenticated service; `helix inspect` takes a file or a server, not both."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner_service.cli import _is_loopback, main


def one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], err


def test_serve_refuses_non_loopback_without_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HELIX_API_TOKEN", raising=False)
    code = main(["serve", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "x.db")])
    one_line_error(code, capsys.readouterr().err, "set HELIX_API_TOKEN")
    monkeypatch.setenv("HELIX_API_TOKEN", "short")
    code = main(["serve", "--port", "0", "--db", str(tmp_path / "x.db")])
    one_line_error(code, capsys.readouterr().err, "HELIX_API_TOKEN must be at least")


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.0.0.5") and not _is_loopback("example.com")


def test_inspect_needs_exactly_one_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["inspect"])
    one_line_error(code, capsys.readouterr().err, "give a plan file, or all of --server")
    code = main(["inspect", str(tmp_path / "p.json"), "--server", "http://127.0.0.1:1", "--job", "j", "--step", "0"])
    one_line_error(code, capsys.readouterr().err, "not both")
    code = main(["inspect", "--server", "http://127.0.0.1:1", "--job", "j"])
    one_line_error(code, capsys.readouterr().err, "--step")
    code = main(["inspect", "--server", "http://127.0.0.1:1", "--job", "j", "--step", "0"])
    one_line_error(code, capsys.readouterr().err, "unreachable")
