"""Stateless planning: everything in the request, nothing stored."""

from __future__ import annotations

from fastapi import APIRouter, Response

from planner_service.api.deps import SolveServiceDep
from planner_service.api.routers._responses import PLAN_RESPONSE, errors
from planner_service.api.schemas import PlanCreate

router = APIRouter(prefix="/plans", tags=["plans"])


@router.post("", response_class=Response, responses={**PLAN_RESPONSE, **errors()})
async def create_plan(body: PlanCreate, service: SolveServiceDep) -> Response:
    """Plan one batch for a cluster and model (preset names or full specs) with a strategy; nothing is stored."""
    data = await service.plan_stateless(body)
    return Response(content=data, media_type="application/json")
