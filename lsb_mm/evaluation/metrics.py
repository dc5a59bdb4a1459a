"""Retrieval metrics with trec_eval's definitions: NDCG@k, MRR@k, Recall@k, MAP@k (and success@k).

A document is relevant when its qrel grade is > 0; NDCG uses the grades as linear gains and the
ideal ranking of all judged documents (``ndcg_cut``); MAP@k divides by all relevant documents
(``map_cut``); MRR@k is the reciprocal rank of the first relevant document within k. Every query
of the qrels counts in the mean; a query with nothing retrieved scores 0.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

__all__ = ["evaluate_run", "evaluate_ranking", "METRICS", "PRIMARY"]

METRICS = ("ndcg", "mrr", "recall", "map", "success")
PRIMARY = "ndcg@10"


def _per_query(ranked: Sequence[str], grades: Mapping[str, float], ks: Sequence[int]) -> Dict[str, float]:
    rel = {d: g for d, g in grades.items() if g > 0}
    n_rel = len(rel)
    gains = np.array([rel.get(d, 0.0) for d in ranked[: max(ks)]], dtype=np.float64)
    hit = gains > 0
    disc = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    ideal = np.sort(np.array(list(rel.values()), dtype=np.float64))[::-1]
    idisc = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
    prec_at = np.cumsum(hit) / np.arange(1, len(hit) + 1) if len(hit) else hit
    out = {}
    for k in ks:
        g, h = gains[:k], hit[:k]
        idcg = float((ideal[:k] * idisc[:k]).sum())
        out[f"ndcg@{k}"] = float((g * disc[: len(g)]).sum()) / idcg if idcg > 0 else 0.0
        first = np.flatnonzero(h)
        out[f"mrr@{k}"] = 1.0 / (first[0] + 1) if first.size else 0.0
        out[f"recall@{k}"] = float(h.sum()) / n_rel if n_rel else 0.0
        out[f"map@{k}"] = float(prec_at[: len(h)][h].sum()) / n_rel if n_rel else 0.0
        out[f"success@{k}"] = float(h.any())
    return out


def evaluate_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]],
                 ks: Iterable[int] = (1, 3, 5, 10), per_query: bool = False) -> Dict[str, object]:
    """Metrics of ``run`` (query id -> ranked document ids, best first) against ``qrels``
    (query id -> {document id: grade}). Returns the means (and ``per_query`` if asked)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be positive, got {ks}")
    per: Dict[str, Dict[str, float]] = {}
    for qid, grades in qrels.items():
        per[qid] = _per_query(list(run.get(qid, ())), grades, ks)
    names: List[str] = [f"{m}@{k}" for m in METRICS for k in ks]
    means = {n: (float(np.mean([p[n] for p in per.values()])) if per else math.nan) for n in names}
    out: Dict[str, object] = {"metrics": means, "queries": len(per)}
    if per_query:
        out["per_query"] = per
    return out


def evaluate_ranking(query_ids: Sequence[str], ranked: Iterable[Sequence], qrels: Mapping[str, Mapping[str, float]],
                     ks: Sequence[int]) -> Dict[str, object]:
    """:func:`evaluate_run` of search results: row ``i`` of ``ranked`` holds the document ids found
    for ``query_ids[i]``, best first (a ``None`` pad, FAISS's "fewer than k", is dropped)."""
    run = {q: [d for d in row if d is not None] for q, row in zip(query_ids, ranked)}
    return evaluate_run(run, qrels, ks)
