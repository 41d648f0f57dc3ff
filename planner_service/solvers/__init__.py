"""Solvers: bucketing DP, the lane-size/assignment ILP, the recompute ILP, and their backends."""
