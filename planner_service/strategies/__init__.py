"""Planning strategies: each maps a `PlanningContext` to a `Plan` (registry in `registry.py`).

A strategy file only composes building blocks: `layout/` (lanes, chunks, recompute), `proposals` and
`search` (candidates, the shared tuning constants), `assembly` (drafts to a simulated plan).
"""
