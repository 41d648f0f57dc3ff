"""`helix train`: data -> per-step plans (service or in-process) -> the plan executor -> optimizer, checkpoints."""
