"""One call from a corpus path to training sequences: open, tokenise (cached), split long documents.

The cache lives in `cache_dir` (default: `.helix-cache` beside the corpus): the tokenizer, and the token
store keyed by the corpus fingerprint and the tokenizer's content, so a changed corpus or tokenizer never
reuses stale ids.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from executor.data.batches import SequenceTable, split_into_windows
from executor.data.corpus import Corpus, CorpusError, open_corpus
from executor.data.token_source import CorpusTokens
from executor.data.token_store import TokenStore, cached_token_store
from executor.data.tokenizer import tokenizer_for

CACHE_FOLDER_NAME = ".helix-cache"


@dataclass(frozen=True)
class Dataset:
    corpus: Corpus
    store: TokenStore
    table: SequenceTable
    tokenizer_source: str
    """The tokenizer file used ('' for a pre-tokenised corpus)."""

    def tokens(self) -> CorpusTokens:
        return CorpusTokens(self.store, self.table)


def default_cache_dir(corpus_path: str | os.PathLike[str]) -> Path:
    p = Path(corpus_path).expanduser().resolve()
    return (p if p.is_dir() else p.parent) / CACHE_FOLDER_NAME


def prepare_dataset(
    corpus_path: str | os.PathLike[str],
    *,
    vocab_size: int,
    max_len: int,
    cache_dir: Path | None = None,
    tokenizer_path: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Open, tokenise (or load the cached ids) and window the corpus for a model of `vocab_size` tokens."""
    corpus = open_corpus(corpus_path)
    cache = cache_dir if cache_dir is not None else default_cache_dir(corpus_path)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the cache folder {cache} ({exc.strerror}); pass --cache-dir") from None
    if corpus.is_tokenized:
        tokenizer_source, key = "", "ids"
        store = cached_token_store(corpus, cache / f"tokens-{corpus.fingerprint()}-ids", None, max_id=vocab_size - 1)
    else:
        tokenizer, tokenizer_source = tokenizer_for(
            corpus, vocab_size=vocab_size, cache_dir=cache, tokenizer_path=tokenizer_path
        )
        key = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:12]
        store = cached_token_store(
            corpus,
            cache / f"tokens-{corpus.fingerprint()}-{key}",
            lambda texts: [e.ids for e in tokenizer.encode_batch(texts)],
            max_id=vocab_size - 1,
        )
    return Dataset(corpus, store, split_into_windows(store.document_lengths(), max_len), tokenizer_source)
