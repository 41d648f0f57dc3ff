"""The file `helix profile` writes, how `--profile FILE` reads it, and the per-(cluster, model, software) cache.

A profile file is either a bare `CostProfile` (what `PUT /v1/jobs/{id}/profile` takes, e.g. written by hand) or a
`ProfileDocument`: the fitted profile together with the cluster and model it was measured for, the software it
ran on, every fit's error, the measured efficiency and the raw measurements (so it can be refitted). Every
`--profile FILE` option accepts both; a document additionally lets a consumer refuse a profile measured for
another cluster or model (`check_matches`).

Why a cache: profiling takes minutes and its result only changes when the devices, the model shape or the
software (torch, CUDA/NCCL, attention kernels, HelixTrain) change, so `helix profile` reuses a document whose key
— a fingerprint of exactly those — matches, unless asked to measure again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner_service.cost_model.comm_model import ALLTOALLS_PER_LAYER
from planner_service.cost_model.profile_fit import Efficiency, FitReport, ProfileFit
from planner_service.cost_model.profile_measurements import ProfileMeasurements
from planner_service.errors import PlanningError
from proto import ClusterSpec, CostProfile, ModelSpec
from proto.fingerprint import fingerprint

CACHE_DIR_ENV = "HELIX_PROFILE_CACHE"
"""Overrides the default cache folder (`~/.cache/helix/profiles`)."""
FIT_VERSION = 6
"""Raised whenever the fit's formulas or what is measured change what a profile becomes (2: all-to-all latency per
call, two calls per layer as the executor issues them, instead of four; 3: the layer timed on lanes of each SP
degree, fitting `sp_degree_costs`; 4: the per-op overhead probe, fitting `op_overhead_s`; 5: the layer timed with
its weight gradients deferred, fitting `weight_grad_share` and `deferred_layer_overhead_s`; 6: the ranks pinned to
each core, giving `devices_per_compute_unit`)."""


class ProfileFileError(PlanningError):
    """A `--profile` file that cannot be used: missing, not JSON, not a profile, or for another cluster/model."""


class ProfileDocument(BaseModel):
    """A measured profile with everything needed to trust it (or not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["helix-profile"] = "helix-profile"
    version: Literal[1] = 1
    profile: CostProfile
    cluster: ClusterSpec
    model: ModelSpec
    software: dict[str, str] = Field(description="Versions that change timings (torch, CUDA, NCCL, kernels, ...).")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="How it was measured (dtype, device, grid, threads, ...)."
    )
    cache_key: str
    created_at: float
    fits: list[FitReport]
    efficiency: Efficiency
    measurements: ProfileMeasurements

    @classmethod
    def from_fit(
        cls,
        fit: ProfileFit,
        measurements: ProfileMeasurements,
        *,
        cluster: ClusterSpec,
        model: ModelSpec,
        software: Mapping[str, str],
        settings: Mapping[str, Any],
    ) -> ProfileDocument:
        """The document of one fit, keyed for the cache by `profile_cache_key`."""
        return cls(
            profile=fit.profile,
            cluster=cluster,
            model=model,
            software=dict(software),
            settings=dict(settings),
            cache_key=profile_cache_key(cluster, model, software, settings),
            created_at=time.time(),
            fits=list(fit.fits),
            efficiency=fit.efficiency,
            measurements=measurements,
        )


def profile_cache_key(
    cluster: ClusterSpec, model: ModelSpec, software: Mapping[str, str], settings: Mapping[str, Any]
) -> str:
    """Fingerprint of what a profile depends on: devices, model shape, software, measurement settings and the
    fit's own formulas (a cached document fitted under other formulas is measured again)."""
    return fingerprint(
        {
            "cluster": cluster.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "software": dict(software),
            "settings": dict(settings),
            "fit": {"version": FIT_VERSION, "alltoalls_per_layer": ALLTOALLS_PER_LAYER},
        }
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "helix" / "profiles")


def cache_path(cache_dir: Path, cluster: ClusterSpec, model: ModelSpec, key: str) -> Path:
    """One file per key, named so a person can tell the entries apart."""
    return cache_dir / f"{_slug(model.name)}--{_slug(cluster.name)}--{key}.json"


def find_cached(cache_dir: Path, cluster: ClusterSpec, model: ModelSpec, key: str) -> ProfileDocument | None:
    """The cached document for `key`, or None (absent, or unreadable: a broken entry is measured again)."""
    path = cache_path(cache_dir, cluster, model, key)
    if not path.is_file():
        return None
    try:
        doc = ProfileDocument.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None
    return doc if doc.cache_key == key else None


def write_document(path: Path, doc: ProfileDocument) -> None:
    """Write atomically (a reader never sees half a file, e.g. a concurrent `helix profile`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(doc.model_dump_json(indent=1))
    tmp.replace(path)


def read_profile_file(path: Path | str) -> tuple[CostProfile, ProfileDocument | None]:
    """The profile in `path` (a `ProfileDocument` or a bare `CostProfile`) and the document when it is one.

    Raises `ProfileFileError` with one line naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileFileError(f"{path}: no such file", field="profile") from None
    except OSError as exc:
        raise ProfileFileError(f"{path}: cannot read ({exc.strerror})", field="profile") from None
    except json.JSONDecodeError as exc:
        raise ProfileFileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})", field="profile") from None
    try:
        if isinstance(data, dict) and data.get("kind") == "helix-profile":
            doc = ProfileDocument.model_validate(data)
            return doc.profile, doc
        return CostProfile.model_validate(data), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "input"
        raise ProfileFileError(
            f"{path}: not a cost profile ({where}: {err.get('msg', 'invalid')}); give a file written by "
            "`helix profile` or a CostProfile JSON",
            field="profile",
        ) from None


def check_matches(doc: ProfileDocument | None, cluster: ClusterSpec, model: ModelSpec, *, source: str) -> None:
    """Refuse a document measured for another cluster or model (a bare profile cannot be checked)."""
    if doc is None:
        return
    if fingerprint(doc.cluster) != fingerprint(cluster):
        raise ProfileFileError(
            f"{source} was measured on cluster {doc.cluster.name!r}, not {cluster.name!r}; profile this cluster",
            field="profile",
        )
    if fingerprint(doc.model) != fingerprint(model):
        raise ProfileFileError(
            f"{source} was measured for model {doc.model.name!r}, not {model.name!r}; profile this model",
            field="profile",
        )


def load_profile_for(path: Path | str, cluster: ClusterSpec, model: ModelSpec) -> CostProfile:
    """`--profile FILE` for a job on (cluster, model): the file's profile, refused if measured for others."""
    profile, doc = read_profile_file(path)
    check_matches(doc, cluster, model, source=str(path))
    return profile


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "custom"
