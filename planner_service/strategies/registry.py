"""Strategy name -> planning function. New strategies register here and appear everywhere."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from planner_service.context import PlanningContext
from planner_service.errors import UnknownStrategy
from planner_service.strategies.dcp import plan_dcp
from planner_service.strategies.flexsp import plan_flexsp
from planner_service.strategies.greedy import plan_greedy
from planner_service.strategies.helix import plan_helix
from planner_service.strategies.infinipipe import plan_infinipipe
from planner_service.strategies.megatron import plan_megatron
from planner_service.strategies.static import plan_static
from proto import Plan

StrategyFn = Callable[[PlanningContext], Plan]

STRATEGIES: MappingProxyType[str, StrategyFn] = MappingProxyType(
    {
        "static": plan_static,
        "megatron": plan_megatron,
        "dcp": plan_dcp,
        "flexsp": plan_flexsp,
        "infinipipe": plan_infinipipe,
        "helix": plan_helix,
        "greedy": plan_greedy,
    }
)


def get_strategy(name: str) -> StrategyFn:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}", field="strategy"
        ) from None
