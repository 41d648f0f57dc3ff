"""One router per resource: stateless plans, jobs, per-step job plans, feedback, profiles, operations."""
