"""Where a rank's token ids come from: a corpus store (training) or a counter-based hash (verification).

The executor asks only for what it materialises, `(seq_id, start, end)`, so a rank never reads the whole
batch: with a corpus, `seq_id` is a row of the sequence table and the ids come from the memory-mapped store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from executor.data.batches import SequenceTable
from executor.data.token_store import TokenStore


class TokenSource(Protocol):
    def token_ids(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        """(end - start,) int64 ids of positions [start, end) of sequence `seq_id`."""
        ...


@dataclass(frozen=True)
class CorpusTokens:
    """Ids of the sequences of a `SequenceTable` over a `TokenStore`."""

    store: TokenStore
    table: SequenceTable

    def token_ids(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        length = int(self.table.length[seq_id])
        assert 0 <= start <= end <= length, f"token range [{start}, {end}) outside sequence {seq_id} of {length}"
        offset = int(self.table.start[seq_id])
        ids = self.store.tokens(int(self.table.document[seq_id]), offset + start, offset + end)
        return torch.from_numpy(ids.astype(np.int64))
