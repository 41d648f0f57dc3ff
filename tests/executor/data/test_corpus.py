"""Corpus reading: which files are documents, in which order, and the one-line errors a user gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from executor.data.corpus import CorpusError, CorpusKind, open_corpus


def test_directory_corpus_reads_text_files_in_path_order_and_skips_binary_hidden_and_caches(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zeta")
    (tmp_path / "a.py").write_text("alpha")
    (tmp_path / "b" / "data.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython.pyc").write_text("compiled")
    (tmp_path / "empty.txt").write_text("")
    corpus = open_corpus(tmp_path)
    assert corpus.kind is CorpusKind.DIRECTORY
    assert [f.relative_to(tmp_path).as_posix() for f in corpus.files] == ["a.py", "b/z.txt"]
    assert list(corpus.texts()) == ["alpha", "zeta"]


def test_fingerprint_changes_when_a_document_changes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    before = open_corpus(tmp_path).fingerprint()
    assert open_corpus(tmp_path).fingerprint() == before
    (tmp_path / "a.txt").write_text("one two")
    assert open_corpus(tmp_path).fingerprint() != before


def test_jsonl_text_and_ids(tmp_path: Path) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world", "meta": 1}) + "\n")
    assert list(open_corpus(texts).texts()) == ["hello", "world"]
    ids = tmp_path / "i.jsonl"
    ids.write_text(json.dumps({"input_ids": [1, 2, 3]}) + "\n" + json.dumps({"input_ids": [4]}) + "\n")
    corpus = open_corpus(ids)
    assert corpus.is_tokenized and list(corpus.token_ids()) == [[1, 2, 3], [4]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "cut', r"t\.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n[1, 2]\n', r"t\.jsonl:2: each line must be a JSON object"),
        ('{"body": "x"}\n', r"t\.jsonl:1: a JSONL corpus needs a 'text' field"),
        ('{"text": "ok"}\n{"text": 5}\n', r"t\.jsonl:2: field 'text' must be a string"),
        ("", r"t\.jsonl is empty"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        list(open_corpus(path).texts())


def test_bad_token_ids_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"input_ids": [1, 2]}\n{"input_ids": [1, "x"]}\n')
    with pytest.raises(CorpusError, match=r"t\.jsonl:2: the token ids must be a list of integers"):
        list(open_corpus(path).token_ids())


def test_missing_and_empty_corpora(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="has no readable text files"):
        open_corpus(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"is a file but not \.jsonl"):
        open_corpus(tmp_path / "notes.txt")
