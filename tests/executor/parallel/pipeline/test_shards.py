"""Chunk shards: the rows of a padded chunk each SP rank materialises, with positions and next-token targets."""

from __future__ import annotations

import pytest
import torch

from executor.parallel.pipeline.shards import IGNORE_INDEX, chunk_layout, materialize_shard, total_targets
from executor.verify.synthetic_tokens import SyntheticTokens, synthetic_token_ids
from proto.plan import Chunk, Segment

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("sp", [1, 2, 4, 8])
def test_chunk_shards_tile_the_chunk(sp: int) -> None:
    """SP shards concatenate to the whole chunk plus padding; targets follow the original sequence, so a
    slice's last token predicts the next slice's first token and only a sequence's last token has none."""
    lengths = {3: 10, 8: 1, 9: 6}
    chunk = Chunk(
        segments=[
            Segment(seq_id=3, start=4, end=7),
            Segment(seq_id=8, start=0, end=1),
            Segment(seq_id=9, start=0, end=6),
        ]
    )
    layout = chunk_layout(chunk, sp)
    assert layout.num_tokens == 10 and layout.padded_tokens % sp == 0 and layout.padded_tokens - 10 < sp
    shards = [materialize_shard(layout, r, lengths=lengths, tokens=SyntheticTokens(1, 50)) for r in range(sp)]
    ids = torch.cat([s.token_ids for s in shards])
    pos = torch.cat([s.positions for s in shards])
    tgt = torch.cat([s.targets for s in shards])
    seq3 = synthetic_token_ids(seed=1, seq_id=3, start=0, end=10, vocab_size=50)
    seq9 = synthetic_token_ids(seed=1, seq_id=9, start=0, end=6, vocab_size=50)
    assert ids[:3].tolist() == seq3[4:7].tolist() and pos[:3].tolist() == [4, 5, 6]
    assert tgt[:3].tolist() == seq3[5:8].tolist()  # token 6 predicts token 7 of the next slice
    assert tgt[3].item() == IGNORE_INDEX  # a length-1 sequence has no target
    assert tgt[4:10].tolist() == [*seq9[1:].tolist(), IGNORE_INDEX]
    assert (tgt[10:] == IGNORE_INDEX).all() and (pos[10:] == 0).all()
    assert sum(s.num_targets for s in shards) == 3 + 0 + 5
    assert total_targets(lengths) == 9 + 0 + 5
