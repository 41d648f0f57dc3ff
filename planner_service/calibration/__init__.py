"""Online calibration: refine a job's `CostProfile` from the step times and peak memory it measures.

`calibrator.Calibrator.observe(plan, feedback) -> CostProfile` is the whole API: the service keeps one per job,
and an in-process training loop can keep its own. `coefficient_groups` says which coefficients move together
and how a plan's predicted time splits over them; `robust_fit` is the window fit one slow step cannot wreck;
`summary` holds the error report (pydantic only, so API schemas can import it without the simulator).
"""
