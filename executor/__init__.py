"""HelixTrain executor: applies plans with torch (Ulysses SP, token-level PP, DP), in layers.

Each folder is one layer, and imports only go down it:

- `model.py` (the Llama-style decoder) and `attention/` (varlen causal attention kernels, K/V prefixes of
  slices): no parallelism at all;
- `parallel/` (process groups, Ulysses, data-parallel sync + optimizer, the token-level `pipeline/`
  runtime): one rank's share of one lane, given the rank's place in the plan;
- `runner.py` (the step driver: refuse or apply a plan on every rank, sync, step) with `role.py` (the
  plan checks and a rank's `RankRole`; it imports only `proto`, so the runtimes may read a role too);
- `verify/` (`helix verify`: the single-process reference, the equivalence harness, local launch,
  the planner's memory prediction, synthetic tokens). Nothing imports it but the CLI's entry point.
"""
