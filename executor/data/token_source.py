"""Token ids of training sequences read from the corpus store, the executor's `TokenSource` for real data.

The executor asks only for what it materialises, `(seq_id, start, end)`, so a rank never reads the whole
batch: `seq_id` is a row of the sequence table and the ids come from the memory-mapped store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from executor.data.batches import SequenceTable
from executor.data.token_store import TokenStore


@dataclass(frozen=True)
class CorpusTokens:
    """Ids of the sequences of a `SequenceTable` over a `TokenStore`: a `parallel.pipeline.shards.TokenSource`."""

    store: TokenStore
    table: SequenceTable

    def __call__(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        length = int(self.table.length[seq_id])
        assert 0 <= start <= end <= length, f"token range [{start}, {end}) outside sequence {seq_id} of {length}"
        offset = int(self.table.start[seq_id])
        ids = self.store.tokens(int(self.table.document[seq_id]), offset + start, offset + end)
        return torch.from_numpy(ids.astype(np.int64))
