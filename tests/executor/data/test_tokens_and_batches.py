"""Tokeniser, token store, windows and global batches: the pieces between a corpus and a plan's seq_ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from executor.data.batches import BatchSampler, DataPosition, split_into_windows
from executor.data.corpus import CorpusError, open_corpus
from executor.data.dataset import prepare_dataset
from executor.data.tokenizer import TokenizerError, load_tokenizer, tokenizer_for

TEXTS = [
    "def add(a, b):\n    return a + b\n" * 5,
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n" * 3,
    "import os\nprint(os.getcwd())\n",
    "x = 1\n",
]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(TEXTS):
        (root / f"doc{i}.py").write_text(text)
    return root


def test_trained_tokenizer_is_cached_and_round_trips(corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(corpus_dir)
    first, source = tokenizer_for(corpus, vocab_size=300, cache_dir=tmp_path / "cache")
    assert Path(source).is_file() and first.get_vocab_size() <= 300
    again, source_again = tokenizer_for(corpus, vocab_size=300, cache_dir=tmp_path / "cache")
    assert source_again == source  # loaded from the cache, not retrained
    for text in TEXTS:
        ids = first.encode(text).ids
        assert again.encode(text).ids == ids
        assert first.decode(ids) == text  # byte-level BPE loses nothing


def test_tokenizer_must_fit_the_model(corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(corpus_dir)
    with pytest.raises(TokenizerError, match="at least 256 tokens"):
        tokenizer_for(corpus, vocab_size=100, cache_dir=tmp_path)
    trained, path = tokenizer_for(corpus, vocab_size=300, cache_dir=tmp_path)
    smaller = trained.get_vocab_size() - 1
    with pytest.raises(TokenizerError, match=f"has {smaller + 1} tokens but the model's vocab_size is {smaller}"):
        tokenizer_for(corpus, vocab_size=smaller, cache_dir=tmp_path, tokenizer_path=path)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TokenizerError, match=r"is not a Hugging Face tokenizer\.json"):
        load_tokenizer(bad)


def test_store_holds_each_document_and_reads_slices(corpus_dir: Path, tmp_path: Path) -> None:
    ds = prepare_dataset(corpus_dir, vocab_size=300, max_len=10_000, cache_dir=tmp_path / "cache")
    tokenizer = load_tokenizer(ds.tokenizer_source)
    assert ds.store.num_documents == len(TEXTS)
    for doc, text in enumerate(TEXTS):
        ids = tokenizer.encode(text).ids
        assert ds.store.tokens(doc, 0, len(ids)).tolist() == ids
        assert ds.store.tokens(doc, 2, 5).tolist() == ids[2:5]
    # a second preparation reuses the cache: same digest, nothing rebuilt
    assert prepare_dataset(corpus_dir, vocab_size=300, max_len=10_000, cache_dir=tmp_path / "cache").store.digest == (
        ds.store.digest
    )


def test_pretokenised_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2, 999]}) + "\n")
    with pytest.raises(CorpusError, match="token id 999 is outside the model's vocabulary"):
        prepare_dataset(path, vocab_size=256, max_len=16, cache_dir=tmp_path / "cache")


def test_windows_keep_every_next_token_pair_exactly_once() -> None:
    """Long documents are split, never truncated: each (t, t+1) pair of a document is a pair of one window."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=40)
    for max_len in (2, 3, 7, 16, 100):
        table = split_into_windows(lengths, max_len)
        assert (table.length >= 2).all() and (table.length <= max_len).all()
        pairs: dict[int, list[int]] = {}
        for doc, start, length in zip(table.document, table.start, table.length, strict=True):
            pairs.setdefault(int(doc), []).extend(range(int(start), int(start + length) - 1))
        for doc, n in enumerate(lengths):
            assert sorted(pairs.get(doc, [])) == list(range(int(n) - 1)), (doc, int(n), max_len)


def test_batches_are_deterministic_cover_an_epoch_and_resume_from_a_position() -> None:
    table = split_into_windows(np.arange(2, 42), 16)
    sampler = BatchSampler(table, seed=7, batch_size=5)
    position, batches = DataPosition(), []
    while position.epoch == 0:
        batch = sampler.next_batch(position)
        batches.append(batch)
        position = batch.position_after
    epoch0 = [s for b in batches for s in b.seq_ids][: len(table)]
    assert sorted(epoch0) == list(range(len(table)))  # every sequence once per epoch
    assert BatchSampler(table, seed=7, batch_size=5).next_batch(DataPosition()) == batches[0]
    assert BatchSampler(table, seed=8, batch_size=5).next_batch(DataPosition()).seq_ids != batches[0].seq_ids
    # restarting from a saved position continues with exactly the batches that followed it
    resumed = sampler.next_batch(DataPosition.from_dict(batches[2].position_after.to_dict()))
    assert resumed == batches[3]
    for batch in batches:
        assert len(set(batch.seq_ids)) == len(batch.seq_ids)
        assert batch.lengths == tuple(int(table.length[s]) for s in batch.seq_ids)


def test_token_budget_batches() -> None:
    table = split_into_windows(np.array([10, 30, 5, 50, 20, 8]), 32)
    sampler = BatchSampler(table, seed=0, token_budget=40)
    position = DataPosition()
    for _ in range(6):
        batch = sampler.next_batch(position)
        assert batch.num_tokens <= 40 or len(batch.seq_ids) == 1
        position = batch.position_after
    with pytest.raises(ValueError, match="below the longest sequence"):
        BatchSampler(table, seed=0, token_budget=8)
    with pytest.raises(ValueError, match="exactly one of batch_size and token_budget"):
        BatchSampler(table, seed=0)
