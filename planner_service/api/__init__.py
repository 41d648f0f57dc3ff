"""The planner's HTTP service: FastAPI app factory, settings, routers, dependencies and error mapping.

Imports are lazy so that `planner_service.api.schemas` (the request/response models the typed client
shares) can be used by the executor without FastAPI or pydantic-settings installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from planner_service.api.app import create_app
    from planner_service.api.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from planner_service.api.app import create_app

        return create_app
    if name == "Settings":
        from planner_service.api.settings import Settings

        return Settings
    raise AttributeError(name)
