"""Cost model: analytic time and memory of chunks, stages and collectives (DESIGN §6).

`CostModel` is the entry point; `profile_presets` derives a documented `CostProfile` from hardware and model
specs when no measured one is given; `compute_model`, `comm_model` and `memory_model` hold the pure formulas.
"""

from planner_service.cost_model.cost_model import ChunkShape, CostModel, LayerTerms, OpCost
from planner_service.cost_model.profile_presets import preset_profile, profile_for

__all__ = ["ChunkShape", "CostModel", "LayerTerms", "OpCost", "preset_profile", "profile_for"]
