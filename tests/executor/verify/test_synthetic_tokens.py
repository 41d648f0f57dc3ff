"""Synthetic token ids: a pure function of (seed, sequence, position), so any rank rebuilds any slice."""

from __future__ import annotations

import pytest
import torch

from executor.verify.synthetic_tokens import SyntheticTokens, synthetic_token_ids

pytestmark = pytest.mark.timeout(60)


def test_synthetic_tokens_are_slice_independent() -> None:
    """Any slice of a sequence has the ids the whole sequence has there (ranks build only their rows),
    ids lie in the vocabulary, and another seed or sequence gives other ids."""
    whole = synthetic_token_ids(seed=1, seq_id=4, start=0, end=50, vocab_size=100)
    parts = torch.cat(
        [synthetic_token_ids(seed=1, seq_id=4, start=a, end=b, vocab_size=100) for a, b in [(0, 7), (7, 50)]]
    )
    assert torch.equal(whole, parts)
    assert int(whole.min()) >= 0 and int(whole.max()) < 100
    assert not torch.equal(whole, synthetic_token_ids(seed=2, seq_id=4, start=0, end=50, vocab_size=100))
    assert not torch.equal(whole, synthetic_token_ids(seed=1, seq_id=5, start=0, end=50, vocab_size=100))


def test_synthetic_token_source_serves_the_same_ids() -> None:
    """`SyntheticTokens` is the token source the executor's shards and the reference both read: a range
    request returns exactly `synthetic_token_ids` for that range."""
    tokens = SyntheticTokens(seed=9, vocab_size=37)
    expected = synthetic_token_ids(seed=9, seq_id=2, start=5, end=19, vocab_size=37)
    assert torch.equal(tokens(2, 5, 19), expected)
    assert tokens(2, 5, 5).numel() == 0
