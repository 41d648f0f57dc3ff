"""The tokenised corpus on disk: every document's ids end to end in one flat file, plus document offsets.

Why a flat memory-mapped file: a rank reads only the tokens of its own chunks (a `seq_id` and a token range),
so touching a slice must cost what the slice costs, not what the corpus costs; `numpy.memmap` does that. The
store is built once per (corpus, tokeniser) and cached in the corpus cache folder; it is built in a private
folder and renamed into place when complete, so a crashed build is rebuilt rather than read half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from executor.data.corpus import Corpus, CorpusError

log = logging.getLogger(__name__)

TOKEN_DTYPE = np.uint32
"""Token ids on disk (vocabularies up to 4G entries)."""
FORMAT_VERSION = 1

EncodeFn = Callable[[list[str]], list[list[int]]]
"""Texts -> their token ids, in order (e.g. a tokenizers.Tokenizer's `encode_batch`, which runs on every core)."""
ENCODE_BATCH_DOCUMENTS = 256
"""Documents handed to the tokenizer at once (its batch encoder parallelises over them)."""


@dataclass(frozen=True)
class TokenStore:
    """Documents as (offsets[i], offsets[i+1]) ranges of one flat id array."""

    ids: np.ndarray
    """All token ids, document after document (memory-mapped, read-only)."""
    offsets: np.ndarray
    """int64, length num_documents + 1."""
    digest: str
    """Hash of the ids and offsets: equal on every node that built the same store."""

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, document: int, start: int, end: int) -> np.ndarray:
        """Ids [start, end) of one document (a view: only those pages are read)."""
        lo = int(self.offsets[document])
        assert 0 <= start <= end <= int(self.offsets[document + 1]) - lo, (
            f"token range [{start}, {end}) outside document {document} of length {int(self.offsets[document + 1]) - lo}"
        )
        return self.ids[lo + start : lo + end]


def build_token_store(documents: Iterable[list[int]], folder: Path, *, max_id: int) -> TokenStore:
    """Write the documents' ids (ids.bin, offsets.npy, meta.json) into a private folder, then rename it to
    `folder` in one step: builders on several nodes sharing a file system never see each other's half-written
    files, and when two finish, the first rename wins and the other's copy is dropped."""
    building = folder.with_name(f"{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    building.mkdir(parents=True)
    try:
        _write_store(documents, building, max_id=max_id)
        try:
            os.rename(building, folder)
        except OSError:  # another builder renamed its complete copy first
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return open_token_store(folder)


def _write_store(documents: Iterable[list[int]], folder: Path, *, max_id: int) -> None:
    offsets = [0]
    digest = hashlib.sha256()
    with open(folder / "ids.bin", "wb") as fh:
        for doc in documents:
            arr = np.asarray(doc, dtype=np.int64)
            if arr.size == 0:
                continue
            top = int(arr.max())
            if top > max_id:
                raise CorpusError(f"token id {top} is outside the model's vocabulary (ids must be < {max_id + 1})")
            raw = arr.astype(TOKEN_DTYPE).tobytes()
            fh.write(raw)
            digest.update(raw)
            offsets.append(offsets[-1] + arr.size)
    if len(offsets) == 1:
        raise CorpusError("the corpus produced no tokens")
    offsets_arr = np.asarray(offsets, dtype=np.int64)
    np.save(folder / "offsets.npy", offsets_arr)
    digest.update(offsets_arr.tobytes())
    meta = {"format": FORMAT_VERSION, "num_documents": len(offsets) - 1, "digest": digest.hexdigest()[:16]}
    (folder / "meta.json").write_text(json.dumps(meta))


def open_token_store(folder: Path) -> TokenStore:
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        offsets = np.load(folder / "offsets.npy")
        ids = np.memmap(folder / "ids.bin", dtype=TOKEN_DTYPE, mode="r")
    except (OSError, ValueError) as exc:
        raise CorpusError(f"token cache {folder} is incomplete or damaged ({exc}); delete it to rebuild") from None
    if meta.get("format") != FORMAT_VERSION or len(offsets) != meta.get("num_documents", -1) + 1:
        raise CorpusError(f"token cache {folder} has another format; delete it to rebuild")
    if int(offsets[-1]) != ids.size:
        raise CorpusError(f"token cache {folder}: ids.bin holds {ids.size} ids, offsets say {int(offsets[-1])}")
    return TokenStore(ids=ids, offsets=offsets, digest=str(meta["digest"]))


def cached_token_store(corpus: Corpus, folder: Path, encode: EncodeFn | None, *, max_id: int) -> TokenStore:
    """The store in `folder` when complete, else built now from the corpus (texts through `encode`, or its ids)."""
    if (folder / "meta.json").is_file():
        return open_token_store(folder)
    log.info("tokenising %s into %s", corpus.path, folder)
    if corpus.is_tokenized:
        documents: Iterable[list[int]] = corpus.token_ids()
    else:
        assert encode is not None, "a text corpus needs a tokenizer"
        documents = (ids for texts in _batched(corpus.texts(), ENCODE_BATCH_DOCUMENTS) for ids in encode(texts))
    return build_token_store(documents, folder, max_id=max_id)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
