"""Measure a rank's peak activation memory over one step.

On CUDA the allocator knows: `torch.cuda.max_memory_allocated` minus what was allocated when the step
began (model states, optimizer). On CPU there is no allocator statistic, so the probe counts what the
planner's memory model calls activations:

- every tensor autograd saves for backward during a forward op, through
  `torch.autograd.graph.saved_tensors_hooks` (inside a checkpointed layer autograd saves nothing; the
  checkpoint's own saved inputs are counted), excluding parameters;
- every tensor the step holds on purpose beside the graph (the K/V cache leaves of earlier slices and
  their accumulated gradients, the GEMM operands a backward op queues for its W op), via a `held` callback.
  The memory model counts the same (`StageMemory.peak(..., transients=False)`, `simulate(...,
  saved_tensor_peaks=True)`); the verify suite's W-op cases measure 0.93-1.07x that prediction.

Bytes are counted per storage, once, however many saved tensors or views share it. A saved tensor stops
counting when autograd frees it (after the backward of its node). The peak is sampled whenever a tensor
is saved or unpacked and at op boundaries, which brackets every moment the count can reach a maximum
(transient working memory of an op, e.g. gradients being computed, is not counted: the planner models it
separately as `transient_bytes`). The held tensors are walked at op boundaries only, where they change; a save
that is also held moves its bytes from the held count to the saved one. Walking them at every save cost a step
with many held tensors up to 20% on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

HeldFn = Callable[[], Iterable[torch.Tensor]]


class _Saved:
    """What autograd stores instead of a saved tensor: the tensor plus a release callback on deletion."""

    __slots__ = ("key", "probe", "tensor")

    def __init__(self, probe: ActivationMemoryProbe, key: int, tensor: torch.Tensor) -> None:
        self.probe, self.key, self.tensor = probe, key, tensor

    def __del__(self) -> None:
        self.probe._release(self.key)


class ActivationMemoryProbe:
    """Live and peak activation bytes of one rank (see the module docstring)."""

    def __init__(self, *, exclude: Iterable[torch.Tensor], held: HeldFn = tuple, device: str = "cpu") -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._held = held
        self._live: dict[int, list[int]] = {}  # storage key -> [bytes, saved tensors referring to it]
        self._live_bytes = 0
        self._held_keys: dict[int, int] = {}  # held storages not saved, as of the last op boundary: key -> bytes
        self._held_now = 0
        self.peak_bytes = 0
        self._cuda = torch.device(device).type == "cuda"
        self._cuda_base = 0

    @property
    def live_bytes(self) -> int:
        return self._live_bytes + self._held_now

    def start(self) -> None:
        """Begin the step (on CUDA: reset the allocator's peak; what is allocated now is not activation)."""
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()

    @contextmanager
    def forward(self) -> Iterator[ActivationMemoryProbe]:
        """Count what autograd saves while a forward op runs.

        Only forward ops are hooked: in backward, autograd also saves tensors of graphs rebuilt for a
        moment (the input-saving attention's score recomputation), which is transient working memory."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self
        self.sample()

    def sample(self) -> None:
        """An op boundary: walk the held tensors again and take the peak."""
        if self._cuda:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated() - self._cuda_base)
            return
        self._held_keys = self._held_storages()
        self._held_now = sum(self._held_keys.values())
        self._take_peak()

    def _take_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._live_bytes + self._held_now)

    # --- hooks -----------------------------------------------------------------------------------------

    def _pack(self, tensor: torch.Tensor) -> object:
        if self._cuda:
            return tensor
        key = _storage_key(tensor)
        if key in self._excluded or key == 0 or _is_parameter(tensor):
            return tensor
        entry = self._live.get(key)
        if entry is None:
            nbytes = tensor.untyped_storage().nbytes()
            self._live[key] = [nbytes, 1]
            self._live_bytes += nbytes
            self._held_now -= self._held_keys.pop(key, 0)  # now counted as saved
            self._take_peak()
        else:
            entry[1] += 1
        return _Saved(self, key, tensor)

    def _unpack(self, packed: object) -> torch.Tensor:
        if isinstance(packed, _Saved):
            self._take_peak()
            return packed.tensor
        assert isinstance(packed, torch.Tensor)
        return packed

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self._live_bytes -= entry[0]

    def _held_storages(self) -> dict[int, int]:
        """The held tensors' storages that no saved tensor counts already: key -> bytes."""
        out: dict[int, int] = {}
        for t in self._held():
            key = _storage_key(t)
            if key in out or key in self._live or key == 0:
                continue
            out[key] = t.untyped_storage().nbytes()
        return out


def _is_parameter(tensor: torch.Tensor) -> bool:
    """A parameter or a view of one: a model state, not an activation. FSDP2's gathered parameters (which it
    hands to the layers as views) get new storage at every gather, so a fixed exclusion set cannot name them."""
    return isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter)


def _storage_key(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):  # an FSDP2 parameter: its local shard is what this rank stores
        tensor = tensor.to_local()
    return tensor.untyped_storage().data_ptr()
