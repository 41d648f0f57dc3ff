"""Planning strategies: each maps a `PlanningContext` to a `Plan` (registry in `registry.py`)."""
