"""Hybrid search: fusing a dense ranking with a lexical (BM25) one.

- :func:`rrf`: reciprocal-rank fusion of several rankings (no weight to choose).
- :func:`weighted_fusion`: per-query min-max normalised scores, ``w * dense + (1 - w) * lexical``;
  :data:`FUSION_WEIGHTS` is the grid a validation split chooses ``w`` from.
- :func:`fuse`: either, by name (``"rrf"``) or weight.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.errors import InputError
from lsb_mm.retrieval.bm25 import Ranking

__all__ = ["rrf", "weighted_fusion", "fuse", "FUSION_WEIGHTS", "RRF_K", "CANDIDATES"]

RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al., 2009)
CANDIDATES = 100  # each side's depth before fusion
FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # dense weight w of weighted fusion
Fused = Tuple[List[List[float]], List[List[str]]]  # fused scores, ids (best first): FAISS's (D, I) order


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


def fuse(dense: Ranking, lexical: Ranking, fusion, k: int) -> Fused:
    """``fusion`` ``"rrf"`` (:func:`rrf`) or a dense weight in [0, 1] (:func:`weighted_fusion`);
    ``dense`` and ``lexical`` are ``(scores, ids)`` rankings and so is the result."""
    if fusion == "rrf":
        return rrf([dense[1], lexical[1]], k)
    if isinstance(fusion, bool) or not isinstance(fusion, (int, float)):
        raise InputError(f"fusion must be 'rrf' or a dense weight in [0, 1], got {fusion!r}")
    return weighted_fusion(dense, lexical, float(fusion), k)
