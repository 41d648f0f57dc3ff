"""Tokenisers from Hugging Face `tokenizers`: a byte-level BPE trained locally on the corpus, or a given file.

Nothing is downloaded. A trained tokeniser is cached as JSON in the corpus cache folder, keyed by the
corpus fingerprint and the vocabulary size, so later runs (and other ranks) load it instead of retraining.
Byte-level BPE covers every input (its alphabet is the 256 byte values), so no document is ever dropped
for an unknown character; no special tokens are added because documents are separate sequences (the
planner never packs two documents into one attention span), so none needs an end-of-document marker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from executor.data.corpus import Corpus, CorpusError

log = logging.getLogger(__name__)

BYTE_ALPHABET_SIZE = 256
"""A byte-level BPE starts from one token per byte value."""
TRAINING_SAMPLE_BYTES = 8 * 2**20
"""Text the BPE is trained on: the corpus's first documents up to this many bytes (merges learnt from a few MB
are stable; training on a whole large corpus costs minutes and changes little). The whole corpus is encoded."""


class TokenizerError(ValueError):
    """A tokeniser that cannot serve this model or corpus; the message names the file and the fix."""


def train_byte_level_bpe(corpus: Corpus, vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens on the corpus texts (deterministic for one input)."""
    if vocab_size < BYTE_ALPHABET_SIZE:
        raise TokenizerError(
            f"a byte-level BPE needs a vocabulary of at least {BYTE_ALPHABET_SIZE} tokens; the model has {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_leading_sample(corpus.texts(), TRAINING_SAMPLE_BYTES), trainer=trainer)
    return tokenizer


def _leading_sample(texts: Iterator[str], max_bytes: int) -> Iterator[str]:
    used = 0
    for text in texts:
        if used >= max_bytes:
            return
        used += len(text.encode("utf-8", errors="replace"))
        yield text


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TokenizerError(f"tokenizer file {p} does not exist (give a Hugging Face tokenizer.json)")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # the Rust library raises a plain Exception for a malformed file
        raise TokenizerError(f"{p} is not a Hugging Face tokenizer.json ({exc})") from None


def tokenizer_for(
    corpus: Corpus, *, vocab_size: int, cache_dir: Path, tokenizer_path: str | os.PathLike[str] | None = None
) -> tuple[Tokenizer, str]:
    """The tokeniser for this corpus and model, and where it came from (the file loaded or written).

    A given `tokenizer_path` wins; otherwise a cached BPE for this corpus and vocabulary, else a new one trained
    now and cached. Its vocabulary must fit the model's embedding.
    """
    if corpus.is_tokenized:
        raise CorpusError(f"{corpus.path} is already tokenised; no tokenizer is needed")
    if tokenizer_path is not None:
        tokenizer, source = load_tokenizer(tokenizer_path), str(tokenizer_path)
    else:
        cached = cache_dir / f"tokenizer-bpe{vocab_size}-{corpus.fingerprint()}.json"
        if cached.is_file():
            tokenizer = load_tokenizer(cached)
        else:
            log.info("training a byte-level BPE (vocabulary %d) on %s", vocab_size, corpus.path)
            tokenizer = train_byte_level_bpe(corpus, vocab_size)
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            tokenizer.save(str(partial))
            os.replace(partial, cached)  # atomic: a concurrent reader sees the whole file or none
        source = str(cached)
    if tokenizer.get_vocab_size() > vocab_size:
        raise TokenizerError(
            f"tokenizer {source} has {tokenizer.get_vocab_size()} tokens but the model's vocab_size is {vocab_size}; "
            "use a model with a larger vocabulary or a smaller tokenizer"
        )
    return tokenizer, source
