"""Training sequences and global batches, deterministic from a seed, with a position a checkpoint can hold.

A document longer than `max_len` becomes consecutive windows of at most `max_len` tokens, overlapping by one
token so that every next-token pair of the document is trained on exactly once; nothing is dropped. Every
epoch visits every sequence once in an order drawn from (seed, epoch), and a global batch takes the next
sequences of that order: a fixed count, or as many as fit a token budget. Every rank builds the same sampler
from the same store and seed, so ranks agree on each batch without shipping it; only the plan travels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proto.batch import Batch


@dataclass(frozen=True)
class SequenceTable:
    """Training sequence i is tokens [start[i], start[i] + length[i]) of document document[i]."""

    document: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.length)

    @property
    def num_tokens(self) -> int:
        return int(self.length.sum())


def split_into_windows(document_lengths: np.ndarray, max_len: int) -> SequenceTable:
    """Every document as consecutive windows of at most `max_len` tokens that overlap by one token.

    Window k starts at k·(max_len − 1), so the last token of a window is the first of the next: every
    (token, next token) pair of a document is a training pair in exactly one window, as in the unsplit
    document. A document of one token has no pair and yields no window.
    """
    if max_len < 2:
        raise ValueError(f"max_len ({max_len}) must be at least 2 (a sequence needs a next-token target)")
    lengths = np.asarray(document_lengths, dtype=np.int64)
    stride = max_len - 1
    windows = np.where(lengths >= 2, -(-(lengths - 1) // stride), 0)
    document = np.repeat(np.arange(len(lengths), dtype=np.int64), windows)
    first_window = np.cumsum(windows) - windows
    index_in_doc = np.arange(int(windows.sum()), dtype=np.int64) - np.repeat(first_window, windows)
    start = index_in_doc * stride
    return SequenceTable(document=document, start=start, length=np.minimum(lengths[document] - start, max_len))


@dataclass(frozen=True, slots=True)
class DataPosition:
    """Where the sampler stands: the next sequence is entry `cursor` of epoch `epoch`'s order."""

    epoch: int = 0
    cursor: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    @classmethod
    def from_dict(cls, value: dict[str, int]) -> DataPosition:
        return cls(epoch=int(value["epoch"]), cursor=int(value["cursor"]))


@dataclass(frozen=True, slots=True)
class GlobalBatch:
    """One step's sequences (their table indices are the plan's seq_ids) and where the sampler stands after."""

    seq_ids: tuple[int, ...]
    lengths: tuple[int, ...]
    position_after: DataPosition

    def batch(self) -> Batch:
        return Batch(seq_ids=list(self.seq_ids), lengths=list(self.lengths))

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


@dataclass(frozen=True)
class BatchSampler:
    """Deterministic global batches over a sequence table: `batch_size` sequences or `token_budget` tokens each."""

    table: SequenceTable
    seed: int
    batch_size: int | None = None
    token_budget: int | None = None

    def __post_init__(self) -> None:
        if (self.batch_size is None) == (self.token_budget is None):
            raise ValueError("give exactly one of batch_size and token_budget")
        if len(self.table) == 0:
            raise ValueError("the corpus has no sequence of at least 2 tokens")
        if self.batch_size is not None and not 1 <= self.batch_size <= len(self.table):
            raise ValueError(f"batch_size ({self.batch_size}) must be between 1 and the {len(self.table)} sequences")
        longest = int(self.table.length.max())
        if self.token_budget is not None and self.token_budget < longest:
            raise ValueError(f"token_budget ({self.token_budget}) is below the longest sequence ({longest} tokens)")

    def order(self, epoch: int) -> np.ndarray:
        """The visiting order of one epoch (a permutation drawn from (seed, epoch))."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.table))

    def next_batch(self, position: DataPosition) -> GlobalBatch:
        """The batch that starts at `position` (it may continue into the next epoch's order)."""
        epoch, cursor = position.epoch, position.cursor
        order = self.order(epoch)
        ids: list[int] = []
        taken: set[int] = set()
        tokens, budget = 0, self.token_budget
        while True:
            if cursor >= len(order):
                epoch, cursor = epoch + 1, 0
                order = self.order(epoch)
            seq = int(order[cursor])
            length = int(self.table.length[seq])
            if self.batch_size is not None:
                if len(ids) == self.batch_size:
                    break
            elif budget is not None and ids and tokens + length > budget:
                break
            if seq in taken:  # a batch that wraps an epoch may meet a sequence twice: end it there
                break
            ids.append(seq)
            taken.add(seq)
            tokens += length
            cursor += 1
        return GlobalBatch(
            seq_ids=tuple(ids),
            lengths=tuple(int(self.table.length[i]) for i in ids),
            position_after=DataPosition(epoch=epoch, cursor=cursor),
        )
