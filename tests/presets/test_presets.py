"""Presets and the --cluster/--model resolver.

Guards against: wrong published shapes (parameter counts off), units slips in bandwidths (bits vs bytes,
per node vs per device), and resolver errors that do not say what would have worked.
"""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from planner_service.cost_model import CostModel
from planner_service.planner import make_plan
from planner_service.presets import (
    CLUSTERS,
    MODELS,
    PresetError,
    list_clusters,
    list_models,
    resolve_cluster,
    resolve_model,
)
from proto import Batch, ClusterSpec, ModelSpec

GiB = 1 << 30

EXPECTED_CLUSTERS = {
    "a100-40g-8x8": (8, 8),
    "a800-80g-4x8": (4, 8),
    "h100-80g-8x8": (8, 8),
    "h100-80g-16x8": (16, 8),
    "cpu-1x2": (1, 2),
    "cpu-2x2": (2, 2),
    "cpu-2x4": (2, 4),
}


def test_cluster_presets_have_expected_shapes_and_sources() -> None:
    assert list_clusters() == sorted(EXPECTED_CLUSTERS)
    for name, (nodes, per_node) in EXPECTED_CLUSTERS.items():
        c = CLUSTERS[name]
        assert isinstance(c, ClusterSpec)
        assert c.name == name
        assert (c.num_nodes, c.devices_per_node) == (nodes, per_node)
        assert c.source, f"{name} has no source"
        # the NVLink/IB cliff: inter-node per-device bandwidth is below intra-node
        assert c.inter_node_bandwidth < c.intra_node_bandwidth


def test_gpu_cluster_numbers_match_documented_values() -> None:
    """Units are bytes/s per device; memory is the part's capacity (the cost profile's reserve is kept free once,
    by the planner: a preset that also subtracted it counted the reserve twice)."""
    a100 = CLUSTERS["a100-40g-8x8"]
    assert a100.peak_flops == 312e12
    assert 97e9 <= a100.intra_node_bandwidth <= 120e9  # FlexSP's measured all-to-all range
    assert 5e9 <= a100.inter_node_bandwidth <= 10e9
    assert a100.device_memory_bytes == 40 * GiB  # A100-SXM4-40GB: 40960 MiB
    a800 = CLUSTERS["a800-80g-4x8"]
    assert a800.peak_flops == 312e12
    assert a800.intra_node_bandwidth < a100.intra_node_bandwidth  # 400 vs 600 GB/s NVLink
    assert a800.device_memory_bytes == 80 * GiB  # A800-SXM4-80GB: 81920 MiB, as the A100 80GB
    for name in ("h100-80g-8x8", "h100-80g-16x8"):
        h100 = CLUSTERS[name]
        assert h100.peak_flops == 989e12
        assert h100.device_memory_bytes == 81559 * 2**20  # H100 SXM5 80GB HBM3 as nvidia-smi reports it
        assert h100.intra_node_bandwidth > a100.intra_node_bandwidth
        assert h100.inter_node_bandwidth > a100.inter_node_bandwidth
    assert CLUSTERS["h100-80g-16x8"].num_devices == 128


def test_cpu_clusters_serve_their_purpose() -> None:
    """The CPU presets exist for executor tests (DESIGN §13: tiny models, batches of a few thousand tokens on
    gloo): such a batch must plan without a pipeline or recompute; the numbers must stay CPU-like (far below a
    GPU's, so nobody reads them as performance predictions); and an SP group across nodes must cost more than
    one inside a node, so the node-aware planning paths run even on loopback."""
    tiny = MODELS["tiny"]
    a100 = CLUSTERS["a100-40g-8x8"]
    batch = Batch.from_lengths([2048, 1024, 512, 300])
    for name in ("cpu-1x2", "cpu-2x2", "cpu-2x4"):
        c = CLUSTERS[name]
        assert "executor tests" in c.source
        plan = make_plan(batch=batch, cluster=c, model=tiny, strategy="greedy", num_stages=1)
        assert not any(any(map(any, lane.recompute)) for lane in plan.lanes), name
        assert c.peak_flops <= a100.peak_flops / 1000
        assert c.device_memory_bytes < a100.device_memory_bytes
        cost = CostModel.from_specs(c, tiny)
        assert cost.alltoall_layer_s(2048, 2, spans_nodes=True) > cost.alltoall_layer_s(2048, 2, spans_nodes=False)


@pytest.mark.parametrize(
    ("name", "expected", "rel"),
    [
        ("llama2-7b", 6.74e9, 0.02),
        ("llama2-13b", 13.0e9, 0.02),
        ("llama3-8b", 8.03e9, 0.02),
        ("gpt-7b", 6.7e9, 0.05),
        ("gpt-13b", 13e9, 0.05),
        ("gpt-30b", 30e9, 0.05),
    ],
)
def test_model_parameter_counts(name: str, expected: float, rel: float) -> None:
    assert MODELS[name].total_params == pytest.approx(expected, rel=rel)


def test_model_shapes() -> None:
    assert list_models() == sorted(
        ["gpt-7b", "gpt-13b", "gpt-30b", "llama2-7b", "llama2-13b", "llama3-8b", "tiny", "small"]
    )
    l3 = MODELS["llama3-8b"]
    assert (l3.num_kv_heads, l3.ffn_hidden_size, l3.vocab_size, l3.rope_theta) == (8, 14336, 128256, 500000.0)
    assert l3.gated_mlp and not l3.tie_embeddings
    gpt30 = MODELS["gpt-30b"]
    assert (gpt30.num_layers, gpt30.hidden_size, gpt30.num_heads, gpt30.head_dim) == (48, 7168, 56, 128)
    assert not gpt30.gated_mlp and gpt30.ffn_hidden_size == 4 * gpt30.hidden_size
    for m in MODELS.values():
        assert m.source


def test_tiny_model_exercises_gqa_below_sp_degree() -> None:
    tiny = MODELS["tiny"]
    assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads) == (64, 2, 8, 2)
    assert 128 <= tiny.ffn_hidden_size <= 176
    assert (tiny.vocab_size, tiny.bytes_per_element) == (256, 4)
    assert tiny.num_kv_heads < 4  # SP degree 4 and 8 must replicate K/V heads


def test_resolve_preset_names_return_the_preset() -> None:
    assert resolve_cluster("a100-40g-8x8") is CLUSTERS["a100-40g-8x8"]
    assert resolve_model("llama3-8b") is MODELS["llama3-8b"]


def test_resolve_cluster_from_json_and_yaml(tmp_path) -> None:
    fields = {
        "num_nodes": 2,
        "devices_per_node": 4,
        "device_memory_bytes": 16e9,
        "peak_flops": 100e12,
        "intra_node_bandwidth": 50e9,
        "inter_node_bandwidth": 5e9,
    }
    jpath = tmp_path / "lab.json"
    jpath.write_text(json.dumps(fields))
    c = resolve_cluster(str(jpath))
    assert (c.name, c.num_devices, c.inter_node_bandwidth) == ("lab", 8, 5e9)
    assert str(jpath) in c.source
    ypath = tmp_path / "other.yaml"
    ypath.write_text(yaml.safe_dump({**fields, "name": "mine", "source": "measured"}))
    c = resolve_cluster(str(ypath))
    assert (c.name, c.source, c.device_memory_bytes) == ("mine", "measured", 16e9)


def test_resolve_model_from_hf_config(tmp_path) -> None:
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "vocab_size": 128256,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    d = tmp_path / "Meta-Llama-3-8B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(hf))
    m = resolve_model(str(d / "config.json"))
    assert m.name == "Meta-Llama-3-8B"
    assert m.total_params == MODELS["llama3-8b"].total_params
    assert (m.num_kv_heads, m.gated_mlp, m.bytes_per_element) == (8, True, 2)
    assert "Hugging Face" in m.source


def test_resolve_model_from_modelspec_yaml(tmp_path) -> None:
    p = tmp_path / "small.yml"
    p.write_text(yaml.safe_dump(MODELS["tiny"].model_dump(exclude={"name", "source"})))
    m = resolve_model(str(p))
    assert m.name == "small"
    assert m.total_params == MODELS["tiny"].total_params


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(PresetError) as info:
        resolve_cluster("a100")
    msg = str(info.value)
    assert "'a100'" in msg and "\n" not in msg
    for name in CLUSTERS:
        assert name in msg
    with pytest.raises(PresetError, match=r"unknown model preset 'llama-7b'.*llama2-7b.*tiny"):
        resolve_model("llama-7b")


def test_missing_file_is_named(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PresetError, match=f"cluster file {missing} does not exist"):
        resolve_cluster(str(missing))


def test_bad_cluster_file_names_file_and_field(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "num_nodes: 0\ndevices_per_node: 8\ndevice_memory_bytes: 1e9\npeak_flops: 1e12\n"
        "intra_node_bandwidth: 1e9\ninter_node_bandwidth: 1e8\n"
    )
    with pytest.raises(PresetError) as info:
        resolve_cluster(str(p))
    msg = str(info.value)
    assert str(p) in msg and "'num_nodes'" in msg and "greater than or equal to 1" in msg
    assert "\n" not in msg


def test_bad_model_files(tmp_path) -> None:
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**MODELS["tiny"].model_dump(), "layers": 3}))
    with pytest.raises(PresetError, match=r"field 'layers': Extra inputs are not permitted"):
        resolve_model(str(extra))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PresetError, match=r"model file .*broken.json: not valid JSON"):
        resolve_model(str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(PresetError, match="expected a mapping of model fields, got list"):
        resolve_model(str(listing))
    hf_no_vocab = tmp_path / "config.json"
    hf_no_vocab.write_text(
        json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 2})
    )
    with pytest.raises(PresetError, match=r"not a usable Hugging Face config: .*vocab_size"):
        resolve_model(str(hf_no_vocab))


def test_presets_are_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        MODELS["tiny"].num_layers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        CLUSTERS["new"] = CLUSTERS["cpu-1x2"]  # type: ignore[index]
    assert isinstance(MODELS["tiny"], ModelSpec)
