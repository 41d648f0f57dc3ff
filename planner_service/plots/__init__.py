"""Pictures of plans (matplotlib, headless)."""
