"""Parameters moved into one flat buffer, with their gradients synchronised over the stage block in buckets.

ZeRO-0/1/2 of the executor contract (`planner_service.cost_model`'s data-parallel contract, DESIGN §9):

- ZeRO-0: the gradients are views into one flat gradient buffer (the gradients themselves, no copy). During a
  rank's LAST backward op of the step, a bucket is all-reduced asynchronously as soon as every parameter in
  it has accumulated its final gradient; the rest go when the op ends. The reductions are waited for at the
  end of the step, so they overlap the backward and never make a rank wait on a peer mid-schedule.
- ZeRO-1: the same, with reduce-scatter into this rank's gradient shard (its slice of every bucket).
- ZeRO-2: every backward op's gradients are copied into bucket buffers as they become final (the parameter's
  own `.grad` is dropped at once) and reduce-scattered asynchronously; the shard accumulates over the step,
  so only bucket buffers in flight and a 1/d shard exist. A rank whose lane has fewer chunks than the
  busiest lane of its block joins the remaining rounds with zeros (`idle_round`).

Buckets are issued in index order on every rank (the order of the collectives on the group must agree), and
the gradients sum (the chunk losses are already divided by the global target-token count).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from executor.parallel.zero.flat_layout import FlatLayout, plan_flat_layout

# torch 2.13 renamed the flat-buffer collectives; older releases only have the former names
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class _Pending:
    work: dist.Work
    keep: tuple[torch.Tensor, ...]
    """Buffers the collective reads or writes (alive until it completes)."""
    accumulate: tuple[torch.Tensor, torch.Tensor] | None = None
    """(received slice, this rank's gradient slice): added once complete (ZeRO-2), or copied (ZeRO-1)."""
    replace: bool = False


class FlatRegion:
    """One flat buffer of parameters of a stage and their bucketed gradient sync over `group`."""

    def __init__(
        self,
        params: list[nn.Parameter],
        *,
        zero_stage: int,
        group: dist.ProcessGroup | None,
        bucket_bytes: float,
        overlap: bool = True,
    ) -> None:
        assert params, "a flat region needs parameters"
        assert zero_stage in (0, 1, 2), f"flat regions serve ZeRO-0/1/2, not {zero_stage}"
        self.params, self.zero_stage, self.group, self.overlap = params, zero_stage, group, overlap
        self.dp_size = dist.get_world_size(group) if group is not None else 1
        self.dp_rank = dist.get_rank(group) if group is not None else 0
        first = params[0]
        sizes = [p.numel() for p in params]
        self.layout: FlatLayout = plan_flat_layout(
            sizes, elem_bytes=first.element_size(), bucket_bytes=bucket_bytes, dp_size=self.dp_size
        )
        layout = self.layout
        self.flat = torch.zeros(layout.padded, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, off, n in zip(params, layout.offsets, layout.sizes, strict=True):
                self.flat[off : off + n].copy_(p.detach().reshape(-1))
                p.data = self.flat[off : off + n].view_as(p)
        # ZeRO-0/1: the gradients live here for the whole step (ZeRO-1's reduced slices replace this rank's own
        # slices of them in place); ZeRO-2 keeps only a shard buffer
        self.grad = torch.zeros_like(self.flat) if zero_stage <= 1 else None
        self.shard_grad = (
            torch.zeros(layout.shard_elems, dtype=first.dtype, device=first.device) if zero_stage == 2 else None
        )
        self.shard_views = [self._shard_view(b) for b in range(len(layout.buckets))] if zero_stage >= 1 else []
        """This rank's reduced gradient slice of each bucket (ZeRO-1/2): the sharded optimizer's gradients."""
        self.shard_params = [self._shard_param(b) for b in range(len(layout.buckets))] if zero_stage >= 1 else []
        self._filled = [0] * len(layout.buckets)
        self._capacity = [max(0, min(hi, layout.num_elems) - lo) for lo, hi in layout.buckets]
        self._staging: dict[int, torch.Tensor] = {}
        self._next_bucket = 0
        self._armed = False
        self._events_left: dict[int, int] = {}
        self._pending: list[_Pending] = []
        self.issued_during_backward = 0
        """Buckets of this step issued by a gradient hook while the backward op was still running (overlap)."""

    # --- step protocol ------------------------------------------------------------------------------------

    def begin_step(self) -> None:
        if self.grad is not None:
            self.grad.zero_()
            for p, off, n in zip(self.params, self.layout.offsets, self.layout.sizes, strict=True):
                p.grad = self.grad[off : off + n].view_as(p)
        else:
            for p in self.params:
                p.grad = None
        if self.shard_grad is not None:
            self.shard_grad.zero_()
        self.issued_during_backward = 0
        self._reset_round()

    @property
    def armed(self) -> bool:
        """Whether the running backward op's gradients are being synchronised."""
        return self._armed

    def arm(self, events: Mapping[int, int] | None = None) -> None:
        """The next backward op's gradients are synchronised as they become final: parameter i once it has had
        `events[i]` gradient events (its hook, or `mark_final`: a trailing group of deferred weight gradients
        adds to what the op accumulates), every other parameter at its first."""
        self._armed = True
        self._events_left = dict(events or {})

    def on_grad_ready(self, index: int) -> None:
        """Hook: parameter `index` has accumulated this backward op's gradient."""
        self._gradient_event(index)

    def mark_final(self, index: int) -> None:
        """Parameter `index` received gradients outside autograd (deferred weight gradients added to `.grad`)."""
        self._gradient_event(index)

    def _gradient_event(self, index: int) -> None:
        if not self._armed:
            return
        left = self._events_left.get(index, 1) - 1
        if left > 0:
            self._events_left[index] = left
            return
        self._events_left.pop(index, None)
        param = self.params[index]
        if self.zero_stage == 2:
            assert param.grad is not None
            flat_grad = param.grad.detach().reshape(-1)
            off = self.layout.offsets[index]
            for bucket, lo, hi in self.layout.param_pieces(index):
                start = self.layout.buckets[bucket][0]
                self._staging_of(bucket)[lo - start : hi - start].copy_(flat_grad[lo - off : hi - off])
            param.grad = None
        for bucket, lo, hi in self.layout.param_pieces(index):
            self._filled[bucket] += hi - lo
        if self.overlap:
            self._issue_ready()

    def end_backward(self) -> None:
        """The armed backward op is over: issue every bucket not issued yet (parameters it never reached
        contribute zeros)."""
        if not self._armed:
            return
        while self._next_bucket < len(self.layout.buckets):
            self._issue(self._next_bucket)
        self._armed = False
        self._events_left = {}
        self._reset_round()

    def reduce_now(self) -> None:
        """Issue every bucket at once (a region synchronised after the backward ops, or a rank with no
        backward op this step)."""
        self.arm()
        self.end_backward()

    def idle_round(self) -> None:
        """ZeRO-2: join one per-chunk round of the block's busier lanes with zero gradients."""
        assert self.zero_stage == 2
        self.reduce_now()

    def wait(self) -> None:
        """Complete every issued collective (at the end of the step)."""
        pending, self._pending = self._pending, []
        for item in pending:
            item.work.wait()
            if item.accumulate is not None:
                received, target = item.accumulate
                if item.replace:
                    target.copy_(received)
                else:
                    target.add_(received)

    # --- after the optimizer step ---------------------------------------------------------------------------

    def gather_flat(self, shard: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The whole flat buffer from every rank's shard (`shard`: this rank's, in shard order), with ONE
        all-gather; `out` (rank-major scratch of the buffer's size) may be passed to avoid an allocation."""
        layout = self.layout
        if self.dp_size == 1:
            return shard
        scratch = torch.empty(layout.padded, dtype=shard.dtype, device=shard.device) if out is None else out
        _all_gather(scratch, shard.contiguous(), group=self.group)
        flat = torch.empty_like(scratch)
        for b, (lo, hi) in enumerate(layout.buckets):
            part, so = (hi - lo) // self.dp_size, layout.shard_offset(b)
            for q in range(self.dp_size):
                src = q * layout.shard_elems + so
                flat[lo + q * part : lo + (q + 1) * part] = scratch[src : src + part]
        return flat

    def all_gather_params(self) -> None:
        """ZeRO-1/2: every rank updated its shard of the parameters; make them whole again."""
        if self.zero_stage == 0 or self.dp_size == 1:
            return
        buckets = range(len(self.layout.buckets))
        mine = torch.cat([self.flat[slice(*self.layout.owned(b, self.dp_rank))] for b in buckets])
        with torch.no_grad():
            self.flat.copy_(self.gather_flat(mine, out=self.grad))

    def full_gradient(self) -> torch.Tensor:
        """The synchronised gradient of the whole region as one flat tensor (collective for ZeRO-1/2)."""
        if self.zero_stage == 0:
            assert self.grad is not None
            return self.grad
        return self.gather_flat(torch.cat(self.shard_views))

    def local_gradients(self) -> list[torch.Tensor]:
        """The gradient this rank holds after the sync: the whole region (ZeRO-0) or its slices (ZeRO-1/2)."""
        if self.zero_stage == 0:
            assert self.grad is not None
            return [self.grad]
        return self.shard_views

    # --- internals ------------------------------------------------------------------------------------------

    def _shard_view(self, bucket: int) -> torch.Tensor:
        lo, hi = self.layout.owned(bucket, self.dp_rank)
        if self.grad is not None:
            return self.grad[lo:hi]
        assert self.shard_grad is not None
        so = self.layout.shard_offset(bucket)
        return self.shard_grad[so : so + (hi - lo)]

    def _shard_param(self, bucket: int) -> nn.Parameter:
        lo, hi = self.layout.owned(bucket, self.dp_rank)
        param = nn.Parameter(self.flat[lo:hi])  # shares the flat buffer's storage: the optimizer updates it
        param.grad = self.shard_views[bucket]
        return param

    def _staging_of(self, bucket: int) -> torch.Tensor:
        if bucket not in self._staging:
            lo, hi = self.layout.buckets[bucket]
            self._staging[bucket] = torch.zeros(hi - lo, dtype=self.flat.dtype, device=self.flat.device)
        return self._staging[bucket]

    def _reset_round(self) -> None:
        self._filled = [0] * len(self.layout.buckets)
        self._next_bucket = 0
        self._staging = {}

    def _issue_ready(self) -> None:
        while self._next_bucket < len(self.layout.buckets) and (
            self._filled[self._next_bucket] >= self._capacity[self._next_bucket]
        ):
            self.issued_during_backward += 1
            self._issue(self._next_bucket)

    def _issue(self, bucket: int) -> None:
        self._next_bucket = bucket + 1
        lo, hi = self.layout.buckets[bucket]
        part = (hi - lo) // self.dp_size
        if self.dp_size == 1:  # the local gradient is the sum (ZeRO-1: already in place)
            if self.zero_stage == 2:
                self.shard_views[bucket].add_(self._staging_of(bucket))
            self._staging.pop(bucket, None)
            return
        if self.zero_stage == 0:
            assert self.grad is not None
            piece = self.grad[lo:hi]
            work = dist.all_reduce(piece, group=self.group, async_op=True)
            self._pending.append(_Pending(work, (piece,)))
        elif self.zero_stage == 1:  # the reduced slice replaces this rank's slice once the bucket is read
            assert self.grad is not None
            src = self.grad[lo:hi]
            received = torch.empty(part, dtype=self.flat.dtype, device=self.flat.device)
            work = _reduce_scatter(received, src, group=self.group, async_op=True)
            self._pending.append(_Pending(work, (src, received), (received, self.shard_views[bucket]), replace=True))
        else:
            if bucket in self._staging:
                src = self._staging.pop(bucket)
            else:  # nothing staged for this bucket this round: this rank contributes zeros
                src = torch.zeros(hi - lo, dtype=self.flat.dtype, device=self.flat.device)
            received = torch.empty(part, dtype=self.flat.dtype, device=self.flat.device)
            work = _reduce_scatter(received, src, group=self.group, async_op=True)
            self._pending.append(_Pending(work, (src, received), (received, self.shard_views[bucket])))
        assert self._pending[-1].work is not None
