"""Cluster presets: the testbeds of the papers HelixTrain builds on, a current H100 setup, and CPU clusters.

Why presets: a plan is only as good as the bandwidth and memory numbers behind it, so each preset states where
its numbers come from (``source``) and the reasoning in a comment. Conventions (see ``proto.ClusterSpec``):
bandwidths are *per device*, in bytes/s, as achieved by collectives (all-to-all), not link marketing rates;
``device_memory_bytes`` is the part's capacity (what ``nvidia-smi`` reports as total): the CUDA context, NCCL
buffers and allocator fragmentation are the cost profile's ``memory_reserve_bytes``, kept free once by the
planner; ``peak_flops`` is dense bf16 tensor-core peak.
Real deployments should replace these with ``helix profile`` measurements.
"""

from __future__ import annotations

from types import MappingProxyType

from proto import ClusterSpec

GiB = 1 << 30
MiB = 1 << 20

# FlexSP's testbed (ASPLOS'25 §6): 8 nodes x 8 A100-SXM4-40GB, NVLink3 (600 GB/s bidirectional per GPU) inside a
# node, one 400 Gb/s InfiniBand link per node. FlexSP measured ~97–120 GB/s all-to-all inside a node: take
# 100 GB/s. Across nodes the 400 Gb/s (50 GB/s) NIC is shared by 8 GPUs: 6.25 GB/s per device, inside FlexSP's
# measured 5–10 GB/s. 40 GiB part (40960 MiB). bf16 dense peak 312 TFLOP/s (A100 datasheet).
A100_40G_8X8 = ClusterSpec(
    name="a100-40g-8x8",
    num_nodes=8,
    devices_per_node=8,
    device_memory_bytes=40 * GiB,
    peak_flops=312e12,
    intra_node_bandwidth=100e9,
    inter_node_bandwidth=6.25e9,
    intra_node_latency_s=10e-6,
    inter_node_latency_s=30e-6,
    source="FlexSP (ASPLOS'25) testbed; intra 100 GB/s from its measured 97-120 GB/s all-to-all; inter "
    "400 Gb/s IB per node / 8 GPUs = 6.25 GB/s (FlexSP: 5-10 GB/s); A100 datasheet 312 TFLOP/s bf16",
)

# InfiniPipe's testbed (arXiv 2509.21275): 4 nodes x 8 A800-80GB. The A800 is an A100 with NVLink cut to
# 400 GB/s (vs 600 GB/s), same 312 TFLOP/s bf16. Intra: FlexSP's A100 all-to-all scaled by 400/600 ≈ 67 GB/s.
# Inter: assumed like FlexSP's cluster (400 Gb/s per node shared by 8 GPUs = 6.25 GB/s per device); the paper's
# exact NIC count is not restated here — profile the real cluster. 80 GiB part (81920 MiB, as the A100 80GB).
A800_80G_4X8 = ClusterSpec(
    name="a800-80g-4x8",
    num_nodes=4,
    devices_per_node=8,
    device_memory_bytes=80 * GiB,
    peak_flops=312e12,
    intra_node_bandwidth=67e9,
    inter_node_bandwidth=6.25e9,
    intra_node_latency_s=10e-6,
    inter_node_latency_s=30e-6,
    source="InfiniPipe (arXiv 2509.21275) testbed; intra = FlexSP A100 all-to-all x 400/600 (A800 NVLink); "
    "inter assumed 400 Gb/s IB per node / 8 GPUs; 312 TFLOP/s bf16",
)

# A current H100-SXM5 cluster (DGX/HGX H100 style): NVLink4 900 GB/s bidirectional per GPU (450 GB/s one way);
# applying FlexSP's A100 all-to-all efficiency (~100 of 300 GB/s one-way, ~1/3 to 0.4) gives ~180 GB/s.
# Eight 400 Gb/s NICs per node = one 50 GB/s NIC per GPU; ~80% achieved in cross-node all-to-all -> 40 GB/s.
# 80 GB HBM3 part: 81559 MiB total as nvidia-smi reports it. bf16 dense peak 989 TFLOP/s (H100 SXM datasheet).
_H100_COMMON = {
    "devices_per_node": 8,
    "device_memory_bytes": 81559 * MiB,
    "peak_flops": 989e12,
    "intra_node_bandwidth": 180e9,
    "inter_node_bandwidth": 40e9,
    "intra_node_latency_s": 8e-6,
    "inter_node_latency_s": 25e-6,
    "source": "H100 SXM datasheet (989 TFLOP/s bf16, NVLink4 900 GB/s); intra = 450 GB/s one-way x FlexSP's "
    "A100 all-to-all efficiency (~0.4); inter = 8x400 Gb/s IB per node -> 50 GB/s per GPU x 0.8",
}
H100_80G_8X8 = ClusterSpec(name="h100-80g-8x8", num_nodes=8, **_H100_COMMON)
H100_80G_16X8 = ClusterSpec(name="h100-80g-16x8", num_nodes=16, **_H100_COMMON)

# CPU "clusters" for executor tests: torchrun processes with gloo over loopback on one machine. Numbers are
# modest and only need the right shape: 4 GiB per process, ~50 GFLOP/s per process (a few cores' float32 SIMD),
# ~2 GB/s gloo loopback. Inter-node is set to half the intra-node rate so that node-aware planning paths (the
# NVLink/IB cliff) are exercised even though loopback has no real cliff. Not for performance predictions.
_CPU_COMMON = {
    "device_memory_bytes": 4 * GiB,
    "peak_flops": 50e9,
    "intra_node_bandwidth": 2e9,
    "inter_node_bandwidth": 1e9,
    "intra_node_latency_s": 50e-6,
    "inter_node_latency_s": 100e-6,
    "source": "CPU test cluster (gloo over loopback); modest nominal numbers for executor tests, not measured",
}
CPU_1X2 = ClusterSpec(name="cpu-1x2", num_nodes=1, devices_per_node=2, **_CPU_COMMON)
CPU_2X2 = ClusterSpec(name="cpu-2x2", num_nodes=2, devices_per_node=2, **_CPU_COMMON)
CPU_2X4 = ClusterSpec(name="cpu-2x4", num_nodes=2, devices_per_node=4, **_CPU_COMMON)

CLUSTERS: MappingProxyType[str, ClusterSpec] = MappingProxyType(
    {c.name: c for c in (A100_40G_8X8, A800_80G_4X8, H100_80G_8X8, H100_80G_16X8, CPU_1X2, CPU_2X2, CPU_2X4)}
)
