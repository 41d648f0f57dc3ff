"""`helix` end to end in-process: plan, compare (table and exact JSON), inspect with a Gantt chart,
and every user error giving exit code 2 with a one-line message (never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner_service.cli import main
from planner_service.strategies.registry import STRATEGIES
from proto import Plan

SHARED_LENGTHS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikipedia-lengths.txt"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_lengths(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lengths.txt"
    path.write_text(text)
    return path


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("plan", "compare", "inspect", "presets"):
        assert command in out
    assert "helix plan --cluster" in out  # examples are shown


def test_plan_then_inspect_with_gantt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths = write_lengths(tmp_path, "\n".join(str(n) for n in [9000, 300, 4000, 120, 70, 2500, 800, 50]) + "\n")
    plan_path = tmp_path / "plan.json"
    code, _, err = run(
        capsys, "plan", "--cluster", "a800-80g-4x8", "--model", "llama2-7b", "--lengths", str(lengths),
        "--batch-size", "8", "--seed", "0", "--strategy", "static", "--out", str(plan_path),
    )  # fmt: skip
    assert code == 0, err
    plan = Plan.model_validate_json(plan_path.read_text())
    assert plan.strategy == "static" and plan.cluster_name == "a800-80g-4x8"
    gantt = tmp_path / "plan.png"
    code, out, err = run(capsys, "inspect", str(plan_path), "--gantt", str(gantt), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["plan_id"] == plan.plan_id
    assert summary["num_lanes"] == len(plan.lanes)
    assert sum(lane["tokens"] for lane in summary["lanes"]) == 9000 + 300 + 4000 + 120 + 70 + 2500 + 800 + 50
    assert gantt.stat().st_size > 10_000 and gantt.read_bytes()[:4] == b"\x89PNG"


def test_plan_records_the_recompute_scope_and_refuses_an_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--recompute-scope mlp` plans with MLP-only recompute (32 sequences of 32K tokens on A100 40 GB: FlexSP's
    SP-8 lanes must recompute) and the plan says so; an unknown scope is a usage error naming the option."""
    lengths = write_lengths(tmp_path, "32768\n" * 32)
    plan_path = tmp_path / "plan.json"
    common = ("plan", "--cluster", "a100-40g-8x8", "--model", "llama2-7b", "--lengths", str(lengths))
    code, _, err = run(
        capsys, *common, "--batch-size", "32", "--strategy", "flexsp", "--recompute-scope", "mlp",
        "--time-limit", "1", "--out", str(plan_path),
    )  # fmt: skip
    assert code == 0, err
    plan = Plan.model_validate_json(plan_path.read_text())
    assert plan.options.recompute_scope.value == "mlp"
    assert any(any(map(any, lane.recompute)) for lane in plan.lanes)
    code, out, err = run(capsys, "inspect", str(plan_path), "--json")
    assert code == 0, err
    assert json.loads(out)["recompute_scope"] == "mlp"
    code, out, err = run(capsys, "inspect", str(plan_path))
    assert code == 0, err
    assert "(MLP halves only)" in " ".join(out.split())
    code, _, err = run(capsys, *common, "--recompute-scope", "attention", "--out", str(plan_path))
    assert code == 2
    assert "--recompute-scope" in err and "Traceback" not in err


def test_compare_json_is_exactly_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "compare", "--cluster", "a800-80g-4x8", "--model", "llama2-7b", "--dataset", "github",
        "--batch-size", "64", "--max-len", "32768", "--seed", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"ideal_s", "workload", "results"}
    assert report["ideal_s"] > 0
    assert [r["strategy"] for r in report["results"]] == list(STRATEGIES)
    keys = {"strategy", "feasible", "iteration_s", "ratio_to_ideal", "peak_memory_gib", "plan_s", "status", "gap"}
    for r in report["results"]:
        assert set(r) == keys
        assert r["feasible"] is True
        assert r["iteration_s"] >= report["ideal_s"]
        assert r["ratio_to_ideal"] == pytest.approx(r["iteration_s"] / report["ideal_s"])
        assert 0 < r["peak_memory_gib"] <= 80


@pytest.mark.slow
def test_compare_on_real_wikipedia_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance command: a feasible static plan on FlexSP's testbed."""
    if not SHARED_LENGTHS.exists():
        pytest.skip("../shared/data is absent (it is not redistributed with the project)")
    code, out, err = run(
        capsys, "compare", "--cluster", "a100-40g-8x8", "--model", "gpt-7b", "--lengths", str(SHARED_LENGTHS),
        "--batch-size", "512", "--max-len", "393216", "--seed", "1", "--json", "--strategies", "static",
    )  # fmt: skip
    assert code == 0, err
    static = json.loads(out)["results"][0]
    assert static["feasible"] and static["ratio_to_ideal"] > 1.0


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    text = " ".join(err.split())  # rich may wrap long lines
    for fragment in fragments:
        assert fragment in text, err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "lengths.txt:1"),
        ("12\nabc\n", "lengths.txt:2"),
        ("12\n0\n", "lengths.txt:2"),
        ("5\n7\n-3\n", "lengths.txt:3"),
    ],
)
def test_malformed_lengths_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    lengths = write_lengths(tmp_path, content)
    code, _, err = run(
        capsys, "plan", "--cluster", "cpu-2x2", "--model", "tiny", "--lengths", str(lengths), "--batch-size", "2",
        "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert_one_line_error(code, err, fragment)


def test_sequence_too_long_for_any_lane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths = write_lengths(tmp_path, "3000000\n100\n")
    code, _, err = run(
        capsys, "plan", "--cluster", "a100-40g-8x8", "--model", "gpt-30b", "--lengths", str(lengths),
        "--batch-size", "2", "--strategy", "greedy", "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert_one_line_error(code, err, "3000000 tokens", "does not fit")


def test_unknown_presets_and_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--dataset", "github", "--batch-size", "4", "--out", str(tmp_path / "p.json")]
    code, _, err = run(capsys, "plan", "--cluster", "nope", "--model", "tiny", *base)
    assert_one_line_error(code, err, "unknown cluster preset 'nope'", "cpu-2x2")
    code, _, err = run(capsys, "plan", "--cluster", "cpu-2x2", "--model", "nope", *base)
    assert_one_line_error(code, err, "unknown model preset 'nope'")
    code, _, err = run(capsys, "plan", "--cluster", "cpu-2x2", "--model", "tiny", "--strategy", "magic", *base)
    assert_one_line_error(code, err, "unknown strategy 'magic'", "static")


def test_cluster_with_zero_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "num_nodes: 0\ndevices_per_node: 8\ndevice_memory_bytes: 4.0e10\npeak_flops: 3.0e14\n"
        "intra_node_bandwidth: 1.0e11\ninter_node_bandwidth: 1.0e10\n"
    )
    code, _, err = run(
        capsys, "plan", "--cluster", str(cluster), "--model", "tiny", "--dataset", "github", "--batch-size", "4",
        "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert_one_line_error(code, err, "num_nodes")


def test_workload_source_must_be_given_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "plan", "--cluster", "cpu-2x2", "--model", "tiny", "--batch-size", "4", "--out", str(tmp_path / "p")
    )
    assert_one_line_error(code, err, "--lengths")


def test_inspect_rejects_a_non_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    code, _, err = run(capsys, "inspect", str(bogus))
    assert_one_line_error(code, err, "bogus.json: not a plan")
    code, _, err = run(capsys, "inspect", str(tmp_path / "missing.json"))
    assert_one_line_error(code, err, "missing.json: cannot read")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["compare", "--bogus"], "No such option: --bogus"),
        (["compare", "-c", "cpu-2x2", "-m", "tiny", "--batch-size", "abc"], "'--batch-size'"),
        (["compare", "-c", "cpu-2x2", "-m", "tiny", "--dataset", "github", "--time-limit", "0"], "--time-limit"),
        (["plan", "-c", "cpu-2x2", "-m", "tiny", "--dataset", "github", "--time-limit", "-1", "-o", "x"], "> 0"),
        (["compare", "-c", "cpu-2x2", "-m", "tiny", "--dataset", "github", "--max-len", str(2**64)], "--max-len"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    """typer raises its own vendored click exceptions: they must not escape as a traceback with exit 1."""
    code, out, err = run(capsys, *args)
    assert_one_line_error(code, err, fragment)
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_a_length_beyond_64_bits_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths = write_lengths(tmp_path, f"100\n{2**63}\n")
    code, _, err = run(
        capsys, "compare", "--cluster", "cpu-2x2", "--model", "tiny", "--lengths", str(lengths), "--batch-size", "2",
    )  # fmt: skip
    assert_one_line_error(code, err, "lengths.txt:2", "2^63 - 1")


def test_hugging_face_config_head_dim_and_dtype(tmp_path: Path) -> None:
    """Qwen3-4B's config sets head_dim 128 (hidden 2560 / 32 heads would say 80) and its dtype."""
    from planner_service.presets import resolve_model

    config = {
        "architectures": ["Qwen3ForCausalLM"], "hidden_size": 2560, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9728, "num_hidden_layers": 36,
        "vocab_size": 151936, "hidden_act": "silu", "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    model = resolve_model(str(path))
    assert (model.head_dim, model.q_dim, model.kv_dim, model.bytes_per_element) == (128, 4096, 1024, 2)
    assert model.params_per_layer == 2 * 2560 * 4096 + 2 * 2560 * 1024 + 3 * 2560 * 9728 + 2 * 2560
    path.write_text(json.dumps({**config, "dtype": "float32"}))  # transformers >= 4.56 writes `dtype`
    assert resolve_model(str(path)).bytes_per_element == 4
    path.write_text(json.dumps({**config, "dtype": "int4"}))
    with pytest.raises(ValueError, match="dtype 'int4'"):
        resolve_model(str(path))
