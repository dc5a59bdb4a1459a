"""BM25 on ``bm25s``: Okapi BM25 over texts (English stop words, no stemming), with ids.

``search`` returns only documents that share a term with the query. ``save`` / ``load`` write a
verified folder (bm25s's own ``.npy`` / JSON files, read without pickle, and a manifest with their
SHA-256), atomically. Fusing its ranking with a dense one: :mod:`lsb_mm.retrieval.fusion`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm._version import __version__
from lsb_mm.errors import InputError, positive_int
from lsb_mm.files import atomic_folder, read_manifest, verify_checksums, write_manifest

__all__ = ["BM25", "Ranking"]

FORMAT, FORMAT_VERSION = "lsb-mm-bm25", 1
_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json", "params.index.json",
          "ids.json")

Ranking = Tuple[np.ndarray, List[List[Optional[str]]]]  # scores [n, k], ids (None: no document)


def _bm25s():
    """``bm25s``, with its logger put back to WARNING: bm25s sets it to DEBUG on import, and its
    per-call debug lines would then reach any root handler (a CLI's stderr) whatever its level."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class BM25:
    """Okapi BM25 over a text corpus: ``BM25.build(texts, ids)``, then ``search(queries, k)``."""

    def __init__(self, retriever, ids: Sequence[str], k1: float, b: float):
        self._r, self.ids, self.k1, self.b = retriever, list(ids), k1, b

    @classmethod
    def build(cls, texts: Sequence[str], ids: Optional[Sequence[str]] = None, k1: float = 1.5, b: float = 0.75) -> "BM25":
        bm25s = _bm25s()

        texts = list(texts)
        ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if not texts:
            raise InputError("BM25: no documents to index")
        if len(ids) != len(texts):
            raise InputError(f"BM25: {len(ids)} ids for {len(texts)} documents")
        if len(set(ids)) != len(ids):
            raise InputError("BM25: document ids must be unique")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"BM25 indexes text: document {ids[bad]!r} is a {type(texts[bad]).__name__}")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return cls(retriever, ids, k1, b)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: Sequence[str], k: int = 10) -> Ranking:
        """Top ``k`` documents of every query, ``k`` capped at the corpus size: ``(scores [n,
        min(k, len)] float32, ids)``; a row ends in ``None`` ids (score 0) where fewer documents
        share a term with the query."""
        bm25s = _bm25s()

        queries = list(queries)
        kk = min(positive_int(k), len(self.ids))
        if not queries:
            return np.zeros((0, kk), np.float32), []
        docs, scores = self._r.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=kk,
                                        show_progress=False)
        out = np.asarray(scores, np.float32).reshape(len(queries), kk).copy()
        ids = [[self.ids[int(d)] if s > 0 else None for d, s in zip(row, srow)] for row, srow in zip(docs, scores)]
        out[np.array([[i is None for i in row] for row in ids], dtype=bool)] = 0.0
        return out, ids

    # -- persistence ----------------------------------------------------------------------------
    def save(self, folder: str) -> str:
        """Write ``folder`` atomically: bm25s's arrays and vocabulary, the ids, a manifest with SHA-256s."""
        with atomic_folder(folder, "manifest.json", "a BM25") as tmp:
            self._r.save(tmp, allow_pickle=False, show_progress=False)
            with open(os.path.join(tmp, "ids.json"), "w", encoding="utf-8") as f:
                json.dump(self.ids, f)
            for stray in sorted(set(os.listdir(tmp)) - set(_FILES)):  # e.g. bm25s's empty non-occurrence array
                os.remove(os.path.join(tmp, stray))
            write_manifest(os.path.join(tmp, "manifest.json"), FORMAT, FORMAT_VERSION,
                           {"count": len(self.ids), "k1": self.k1, "b": self.b, "versions": {"lsb_mm": __version__}}, _FILES)
        return folder

    @classmethod
    def load(cls, folder: str) -> "BM25":
        """Read a folder written by :meth:`save`; every file is checked against the manifest."""
        bm25s = _bm25s()

        path = os.path.join(folder, "manifest.json")
        man = read_manifest(path, FORMAT, (FORMAT_VERSION, FORMAT_VERSION), InputError,
                            f"{folder} is not an lsb-mm BM25 folder: manifest.json is missing")
        verify_checksums(folder, man.get("sha256"), _FILES, path)
        with open(os.path.join(folder, "ids.json"), encoding="utf-8") as f:
            ids = json.load(f)
        if not isinstance(ids, list) or len(ids) != man.get("count"):
            raise InputError(f"{folder}/ids.json: expected {man.get('count')} ids")
        retriever = bm25s.BM25.load(folder, allow_pickle=False, show_progress=False, verbosity=0)
        return cls(retriever, ids, float(man.get("k1", 1.5)), float(man.get("b", 0.75)))
