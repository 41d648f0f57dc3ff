"""Layout building blocks every strategy composes: lanes (who runs which sequences), chunks (how a lane's
sequences become micro-batches) and recompute (how many layers each chunk drops and recomputes).

- `work_model`: per-sequence time on a lane of size s, fitted from the cost model.
- `lanes`: lane specs, longest-processing-time dealing, aligned (buddy) offsets.
- `flexible_lanes`: lanes of different sizes chosen by the lane ILP over length buckets.
- `memory_fit`: whether a sequence fits a lane at all, and the token cap that keeps chunks in memory.
- `chunks`: the one slicer (equal-cost cuts), the packers, and the two chunking policies built on them.
- `recompute`: per (lane, stage, chunk) recompute counts: none, uniform, greedy or by the recompute ILP.
"""
