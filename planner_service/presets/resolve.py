"""Resolve a ``--cluster`` / ``--model`` argument: a preset name or a YAML/JSON file.

Why one resolver: the CLI, the service and benchmarks all accept the same spellings, and a typo must fail with
one line that says what was wrong and what would have worked (the preset names, or the file and field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from planner_service.presets.clusters import CLUSTERS
from planner_service.presets.models import MODELS
from proto import ClusterSpec, ModelSpec

_FILE_SUFFIXES = (".json", ".yaml", ".yml")
# Keys that only a Hugging Face config.json has (ModelSpec calls these num_layers etc.).
_HF_KEYS = frozenset({"num_hidden_layers", "n_layer", "num_attention_heads", "n_head", "model_type", "architectures"})


class PresetError(ValueError):
    """A cluster or model argument names no preset, or its file cannot be read or validated."""


def list_clusters() -> list[str]:
    """Cluster preset names, sorted."""
    return sorted(CLUSTERS)


def list_models() -> list[str]:
    """Model preset names, sorted."""
    return sorted(MODELS)


def _looks_like_path(arg: str) -> bool:
    return arg.lower().endswith(_FILE_SUFFIXES) or "/" in arg or "\\" in arg


def _load_mapping(path: Path, kind: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetError(f"{kind} file {path}: cannot read it ({exc})") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise PresetError(
            f"{kind} file {path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {detail}"
        ) from exc
    if not isinstance(data, dict):
        raise PresetError(f"{kind} file {path}: expected a mapping of {kind} fields, got {type(data).__name__}")
    return data


def _validation_message(kind: str, path: Path, exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{kind} file {path}: field '{field}': {first['msg']}{more}"


def _missing(kind: str, arg: str, names: list[str]) -> PresetError:
    if _looks_like_path(arg):
        return PresetError(f"{kind} file {arg} does not exist (or use a preset: {', '.join(names)})")
    return PresetError(f"unknown {kind} preset {arg!r}; choose one of: {', '.join(names)}, or a YAML/JSON file")


def resolve_cluster(name_or_path: str) -> ClusterSpec:
    """The preset called ``name_or_path``, or a ``ClusterSpec`` read from that YAML/JSON file.

    A file without a ``name`` gets its file stem as the name.
    """
    if name_or_path in CLUSTERS:
        return CLUSTERS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise _missing("cluster", name_or_path, list_clusters())
    data = _load_mapping(path, "cluster")
    data.setdefault("name", path.stem)
    data.setdefault("source", f"file {path}")
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise PresetError(_validation_message("cluster", path, exc)) from exc


def resolve_model(name_or_path: str) -> ModelSpec:
    """The preset called ``name_or_path``, or a ``ModelSpec`` read from that file.

    The file holds either ``ModelSpec`` fields or a Hugging Face ``config.json`` (recognised by keys such as
    ``num_hidden_layers``/``model_type`` and no ``num_layers``). A Hugging Face config is named after its
    directory when the file is called ``config.json`` (``.../Llama-3-8B/config.json`` -> ``Llama-3-8B``).
    """
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise _missing("model", name_or_path, list_models())
    data = _load_mapping(path, "model")
    if "num_layers" not in data and _HF_KEYS & data.keys():
        default_name = path.resolve().parent.name if path.stem == "config" else path.stem
        try:
            spec = ModelSpec.from_hf_config(data, name=default_name or "hf")
        except ValidationError as exc:
            raise PresetError(_validation_message("model", path, exc)) from exc
        except (ValueError, TypeError) as exc:
            raise PresetError(f"model file {path}: not a usable Hugging Face config: {exc}") from exc
        return spec.model_copy(update={"source": f"Hugging Face config.json ({path})"})
    data.setdefault("name", path.stem)
    data.setdefault("source", f"file {path}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise PresetError(_validation_message("model", path, exc)) from exc
