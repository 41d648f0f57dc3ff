"""Point-to-point traffic of one rank with the neighbouring stages of its lane.

F(c) on stage p sends its output activations to stage p+1; B(c) on stage p+1 sends the gradient of those
activations back. Both go to the *same SP position* of the neighbouring stage (Ulysses keeps a chunk's
rows [r*S, (r+1)*S) on SP rank r at every stage), so a message is always (S, hidden) in the step's dtype,
with S known from the plan: no shape handshake.

Sends are asynchronous (`isend`); the sender keeps the tensor and the work handle until `finish` waits for
them at the end of the step. Receives wait at most `timeout_s`; a receive that waits longer raises
`ReceiveTimeout` naming the rank, stage, lane and op instead of hanging. (With gloo, `Work.wait(timeout)`
is the only way to bound a receive: `is_completed()` of a p2p work never turns true before `wait`. A
timed-out wait also closes the gloo pair, so the group is unusable afterwards: a timeout is fatal.)

Messages are tagged by (chunk, direction), so ops that run in a different order on the two sides of a
link still match the right buffers.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

ACTIVATION, GRADIENT = 0, 1


class ReceiveTimeout(RuntimeError):
    """A pipeline receive waited longer than the configured timeout."""


def message_tag(chunk: int, direction: int) -> int:
    return 2 * chunk + direction


@dataclass(kw_only=True)
class StageLinks:
    """Sends and receives of one rank at one stage of one lane, for one step."""

    rank: int
    lane_id: int
    stage: int
    prev_rank: int | None
    """The same SP position at stage - 1 (None on the first stage)."""
    next_rank: int | None
    """The same SP position at stage + 1 (None on the last stage)."""
    timeout_s: float
    _pending: list[tuple[dist.Work, torch.Tensor, str]] = field(default_factory=list)

    def send_activation(self, chunk: int, tensor: torch.Tensor) -> None:
        assert self.next_rank is not None, f"rank {self.rank}: the last stage sends no activations"
        self._send(tensor, self.next_rank, message_tag(chunk, ACTIVATION), f"activations of F{chunk}")

    def send_gradient(self, chunk: int, tensor: torch.Tensor) -> None:
        assert self.prev_rank is not None, f"rank {self.rank}: the first stage sends no gradients"
        self._send(tensor, self.prev_rank, message_tag(chunk, GRADIENT), f"input gradient of B{chunk}")

    def recv_activation(self, chunk: int, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
        assert self.prev_rank is not None, f"rank {self.rank}: the first stage receives no activations"
        return self._recv(shape, dtype, device, self.prev_rank, message_tag(chunk, ACTIVATION), f"F{chunk}")

    def recv_gradient(self, chunk: int, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
        assert self.next_rank is not None, f"rank {self.rank}: the last stage receives no gradients"
        return self._recv(shape, dtype, device, self.next_rank, message_tag(chunk, GRADIENT), f"B{chunk}")

    def finish(self) -> None:
        """Wait for every send of the step (each as long as a receive may wait)."""
        pending, self._pending = self._pending, []
        for work, _, what in pending:
            try:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout_s))
            except RuntimeError as err:
                raise ReceiveTimeout(
                    f"rank {self.rank} (lane {self.lane_id}, stage {self.stage}): sending {what} did not complete "
                    f"within {self.timeout_s:g} s: {err}"
                ) from err

    def _send(self, tensor: torch.Tensor, dst: int, tag: int, what: str) -> None:
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, dst=dst, tag=tag)
        assert work is not None, f"rank {self.rank} is not in the default group"
        self._pending.append((work, tensor, what))

    def _recv(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: str, src: int, tag: int, op: str
    ) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype, device=device)
        work = dist.irecv(buffer, src=src, tag=tag)
        assert work is not None, f"rank {self.rank} is not in the default group"
        try:
            work.wait(timeout=datetime.timedelta(seconds=self.timeout_s))
        except RuntimeError as err:
            what = "activations" if tag % 2 == ACTIVATION else "gradient"
            raise ReceiveTimeout(
                f"rank {self.rank} (lane {self.lane_id}, stage {self.stage}) timed out after {self.timeout_s:g} s in "
                f"op {op} waiting for the {what} of chunk {tag // 2} {tuple(shape)} from rank {src}: {err}"
            ) from err
        return buffer
