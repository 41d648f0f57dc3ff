"""Wire contract: JSON round trips exactly, and the committed JSON Schema matches the models."""

from __future__ import annotations

from proto import Plan
from proto.schema_gen import SCHEMA_DIR, render
from tests.proto.plan_factory import two_stage_plan


def test_plan_round_trip() -> None:
    plan = two_stage_plan()
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert again.content_hash() == plan.plan_id


def test_committed_schema_is_current() -> None:
    """Fails when a proto model changed without `make schema` (python -m proto.schema_gen)."""
    for name, text in render().items():
        path = SCHEMA_DIR / name
        assert path.exists(), f"{path} missing: run python -m proto.schema_gen"
        assert path.read_text() == text, f"{path} is stale: run python -m proto.schema_gen"
