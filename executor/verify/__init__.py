"""Verification of the executor: `helix verify` (`command`), the single-process reference (`reference`),
the multi-rank equivalence harness (`equivalence`, `launch`), the planner's memory prediction to compare
with what ranks measure (`memory_prediction`), and the synthetic tokens every rank can rebuild."""
