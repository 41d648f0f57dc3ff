"""One `helix profile` run: its cache key, the per-rank measurement, rank 0's fit, document and summary.

The cache key is computed the same way before a launch (to skip it when a document exists) and on rank 0 after
measuring (to file the new document): devices (cluster spec and device name), model shape, software versions and
measurement settings.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from executor.profile.grid import ProfileSettings
from executor.profile.measure import measure_on_rank
from proto.cluster import ClusterSpec
from proto.model import ModelSpec

if TYPE_CHECKING:
    from planner_service.cost_model.profile_document import ProfileDocument


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileTarget:
    """What to profile and where the document goes."""

    cluster: ClusterSpec
    model: ModelSpec
    settings: ProfileSettings
    out: Path | None
    cache_dir: Path | None
    """None: no cache (neither read nor written)."""


def software_versions(device: str) -> dict[str, str]:
    """Versions (and the device model) that change what a profile measures."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "helixtrain": _version("helixtrain"),
        "flash_attn": _version("flash-attn") or _version("flash-attn-4"),
        "platform": platform.machine(),
    }
    if device == "cuda":
        versions |= {
            "cuda": str(torch.version.cuda),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "gpu": torch.cuda.get_device_name(),
        }
    return versions


def cache_key(target: ProfileTarget) -> str:
    """The target's key: devices, model, software and settings."""
    from planner_service.cost_model.profile_document import profile_cache_key

    software = software_versions(target.settings.device)
    return profile_cache_key(target.cluster, target.model, software, target.settings.describe())


def cache_file(target: ProfileTarget) -> Path | None:
    """Where the cache keeps this target's document (None without a cache)."""
    from planner_service.cost_model.profile_document import cache_path

    if target.cache_dir is None:
        return None
    return cache_path(target.cache_dir, target.cluster, target.model, cache_key(target))


def cached_document(target: ProfileTarget) -> ProfileDocument | None:
    """The cached document for this target, or None."""
    from planner_service.cost_model.profile_document import find_cached

    if target.cache_dir is None:
        return None
    return find_cached(target.cache_dir, target.cluster, target.model, cache_key(target))


def run_profile_rank(target: ProfileTarget) -> ProfileDocument | None:
    """Measure on this rank (collective); rank 0 fits, writes the document to `out` and the cache, returns it."""
    from planner_service.cost_model.profile_document import ProfileDocument, write_document
    from planner_service.cost_model.profile_fit import fit_profile

    measurements = measure_on_rank(target.cluster, target.model, target.settings)
    if measurements is None:
        return None
    fit = fit_profile(measurements, target.cluster, target.model)
    doc = ProfileDocument.from_fit(
        fit,
        measurements,
        cluster=target.cluster,
        model=target.model,
        software=software_versions(target.settings.device),
        settings=target.settings.describe(),
    )
    cached = cache_file(target)
    for path in (target.out, cached):
        if path is not None:
            write_document(path, doc)
    return doc


def init_rank(device: str, timeout_s: float = 600.0) -> None:
    """The default process group from torchrun's environment: gloo on CPU, NCCL on CUDA."""
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""
