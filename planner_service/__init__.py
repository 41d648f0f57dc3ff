"""HelixTrain planner: cost model, simulator, solvers, strategies, CLI and service."""
