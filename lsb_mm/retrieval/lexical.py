"""BM25 (on ``bm25s``) and hybrid fusion of a lexical and a dense ranking.

- :class:`BM25`: Okapi BM25 over texts (English stop words, no stemming), with ids; ``search``
  returns only documents that share a term with the query. ``save`` / ``load`` write a verified
  folder (bm25s's own ``.npy`` / JSON files, read without pickle, and a manifest with their
  SHA-256), atomically.
- :func:`rrf`: reciprocal-rank fusion of several rankings (no weight to choose).
- :func:`weighted_fusion`: per-query min-max normalised scores, ``w * dense + (1 - w) * lexical``;
  :data:`FUSION_WEIGHTS` is the grid a validation split chooses ``w`` from.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm._version import __version__
from lsb_mm.errors import InputError, positive_int
from lsb_mm.files import atomic_folder, read_manifest, verify_checksums, write_manifest

__all__ = ["BM25", "rrf", "weighted_fusion", "fuse", "FUSION_WEIGHTS", "RRF_K", "CANDIDATES"]

FORMAT, FORMAT_VERSION = "lsb-mm-bm25", 1
RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al., 2009)
CANDIDATES = 100  # each side's depth before fusion
FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # dense weight w of weighted fusion
_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json", "params.index.json",
          "ids.json")

Ranking = Tuple[np.ndarray, List[List[Optional[str]]]]  # scores [n, k], ids (None: no document)
Fused = Tuple[List[List[float]], List[List[str]]]  # fused scores, ids (best first): FAISS's (D, I) order


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


def rrf(rankings: Sequence[List[List[Optional[str]]]], k: int, c: int = RRF_K) -> Fused:
    """Reciprocal-rank fusion: each document scores ``sum 1 / (c + rank)`` over the rankings that
    hold it (rank from 1); ties keep the order of first appearance. Returns ``(scores, ids)``, FAISS's order."""
    ids, scores = [], []
    for rows in zip(*rankings):
        score: Dict[str, float] = {}
        for row in rows:
            for rank, doc in enumerate((d for d in row if d is not None), 1):
                score[doc] = score.get(doc, 0.0) + 1.0 / (c + rank)
        top = sorted(score, key=lambda d: -score[d])[:k]
        ids.append(top)
        scores.append([score[d] for d in top])
    return scores, ids


def _minmax(scores: np.ndarray, ids: List[List[Optional[str]]]) -> List[Dict[str, float]]:
    rows = []
    for srow, irow in zip(scores, ids):
        pairs = [(d, float(s)) for d, s in zip(irow, srow) if d is not None]
        if not pairs:
            rows.append({})
            continue
        lo, hi = min(s for _, s in pairs), max(s for _, s in pairs)
        rows.append({d: (s - lo) / (hi - lo) if hi > lo else 1.0 for d, s in pairs})
    return rows


def weighted_fusion(dense: Ranking, lexical: Ranking, weight: float, k: int) -> Fused:
    """``weight * dense + (1 - weight) * lexical`` over per-query min-max normalised scores; a
    document missing from one side scores 0 there. Returns ``(scores, ids)``, FAISS's order."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"fusion weight must be in [0, 1] (the dense side's share), got {weight}")
    ids, scores = [], []
    for d, lx in zip(_minmax(*dense), _minmax(*lexical)):
        fused = {doc: weight * d.get(doc, 0.0) + (1 - weight) * lx.get(doc, 0.0) for doc in {**d, **lx}}
        top = sorted(fused, key=lambda doc: (-fused[doc], doc))[:k]
        ids.append(top)
        scores.append([fused[doc] for doc in top])
    return scores, ids


def fuse(dense: Ranking, lexical: Ranking, hybrid, k: int) -> Fused:
    """``hybrid`` ``"rrf"`` (:func:`rrf`) or a dense weight in [0, 1] (:func:`weighted_fusion`);
    ``dense`` and ``lexical`` are ``(scores, ids)`` rankings and so is the result."""
    if hybrid == "rrf":
        return rrf([dense[1], lexical[1]], k)
    if isinstance(hybrid, bool) or not isinstance(hybrid, (int, float)):
        raise InputError(f"hybrid must be 'rrf' or a dense weight in [0, 1], got {hybrid!r}")
    return weighted_fusion(dense, lexical, float(hybrid), k)
