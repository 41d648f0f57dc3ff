"""Generate the JSON Schema of every wire model into proto/schema/ (`python -m proto.schema_gen`).

`tests/proto/test_schema.py` fails when the committed files differ from what this writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from proto.batch import Batch
from proto.cluster import ClusterSpec
from proto.errors import ErrorBody
from proto.feedback import Feedback
from proto.model import ModelSpec
from proto.plan import Plan
from proto.profile import CostProfile
from proto.requests import PlanRequest

SCHEMA_DIR = Path(__file__).parent / "schema"
MODELS: dict[str, type[BaseModel]] = {
    "batch": Batch,
    "cluster_spec": ClusterSpec,
    "cost_profile": CostProfile,
    "error_body": ErrorBody,
    "feedback": Feedback,
    "model_spec": ModelSpec,
    "plan": Plan,
    "plan_request": PlanRequest,
}


def render() -> dict[str, str]:
    """File name -> JSON text of each schema (serialization mode, so computed fields appear)."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(mode="serialization"), indent=2, sort_keys=True)
        + "\n"
        for name, model in MODELS.items()
    }


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (SCHEMA_DIR / name).write_text(text)
    sys.stdout.write(f"wrote {len(MODELS)} schemas to {SCHEMA_DIR}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
