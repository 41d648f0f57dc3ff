"""`helix profile`: measure the job's devices and fit the cost model's coefficients (DESIGN §6).

On every rank of a local torchrun (CPU/gloo or CUDA/NCCL), at the same time, so the measurements see the
concurrency a training step sees: one transformer layer of the job's model forward, backward and recomputed over a
grid of (tokens, sequence length, context); the LM head and loss; the bytes autograd saves; the training state per
parameter; and the collectives plans use — the Ulysses all-to-all per SP degree and placement, pipeline send/recv
within and across nodes, and the data-parallel all-reduce/reduce-scatter per group size. Rank 0 fits the
`CostProfile` (`planner_service.cost_model.profile_fit`) and writes the profile document.

`step_timing` times whole training steps of given plans on the same ranks (for `bench/executor_accuracy.py` and
the GPU check): what the profile's predictions are compared with.
"""
