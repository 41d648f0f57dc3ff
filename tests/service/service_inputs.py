"""Plain inputs shared by the service tests: values and the types of the factory fixtures (the fixtures
themselves live in conftest.py).

Workloads stay tiny (cluster cpu-2x2, model tiny, strategy greedy, <= 64 sequences) so the suite is fast on
a 2-core machine; these tests are about the service contract, not plan quality.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from planner_service.api import Settings

TOKEN = "s3cret-token-for-tests-0123456789"
SMALL_JOB: dict[str, Any] = {"cluster": "cpu-2x2", "model": "tiny", "strategy": "greedy"}
LENGTHS = [700, 120, 300, 90, 1500, 64, 256, 800]
SMALL_SETTINGS: dict[str, Any] = {
    "solver_time_limit_s": 2.0,
    "max_concurrent_solves": 2,
    "max_body_bytes": 64 * 1024,
    "max_sequences": 256,
    "default_sample_size": 16,
}
"""Service settings small enough for the tests (the body limit is what the 413 test exceeds)."""

SettingsFactory = Callable[..., Settings]
"""Type of the `make_settings` fixture: `make_settings(db, **overrides)`."""
LiveServerFactory = Callable[..., AbstractContextManager[str]]
"""Type of the `live_server` fixture: `with live_server(settings[, solve_fn]) as base_url`."""
