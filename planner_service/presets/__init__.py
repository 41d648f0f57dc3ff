"""Named clusters and models with documented numbers, and the resolver for ``--cluster`` / ``--model``."""

from planner_service.presets.clusters import CLUSTERS
from planner_service.presets.models import MODELS
from planner_service.presets.resolve import PresetError, list_clusters, list_models, resolve_cluster, resolve_model

__all__ = ["CLUSTERS", "MODELS", "PresetError", "list_clusters", "list_models", "resolve_cluster", "resolve_model"]
