"""``evaluate(model, task_folders)``: encode each corpus once, index it with FAISS, search, score.

Results are a JSON-able dict: per task the metrics of :mod:`lsb_mm.evaluation.metrics` (primary NDCG@10, or
NDCG at the largest cut-off when 10 is not asked for), sizes and timings. ``enhance=False`` scores
the plain backbone, so heads can be reported side by side with it; a :class:`CorpusCache` shared
by such calls encodes each corpus once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lsb_mm.data.tasks import Task, read_task
from lsb_mm.errors import InputError, positive_int
from lsb_mm.files import write_text
from lsb_mm.retrieval.index import Index
from lsb_mm.retrieval.bm25 import BM25
from lsb_mm.retrieval.fusion import CANDIDATES, FUSION_WEIGHTS, fuse
from lsb_mm.evaluation.metrics import PRIMARY, evaluate_ranking

__all__ = ["evaluate", "choose_fusion_weight", "find_tasks", "encode_records", "CorpusCache", "primary_metric", "check_ks"]

log = logging.getLogger(__name__)


def find_tasks(paths: Sequence[str]) -> List[str]:
    """Task folders: each path is a task (has queries.jsonl) or a folder of tasks. Hidden entries
    are not tasks: ``.NAME.tmp-*`` / ``.NAME.old-*`` are what an interrupted atomic write leaves."""
    out: List[str] = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "queries.jsonl")):
            out.append(p)
        elif os.path.isdir(p):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p)
                          if not d.startswith(".") and os.path.isfile(os.path.join(p, d, "queries.jsonl")))
            if not subs:
                raise InputError(f"{p} is neither a task folder (queries.jsonl, corpus.jsonl, qrels/) nor a folder of tasks")
            out += subs
        else:
            raise InputError(f"task folder {p} does not exist")
    return out


def encode_records(model, records: List[dict], role: str, batch_size: int = 64, enhance: bool = True,
                   show_progress_bar: Optional[bool] = None, num_workers: int = 0) -> np.ndarray:
    """Encode BEIR records (``text`` or ``image`` field) with the tower their kind needs."""
    kind = Task.kind(records)
    return model.encode([r[kind] for r in records], kind, role, batch_size=batch_size, enhance=enhance,
                        show_progress_bar=show_progress_bar, num_workers=num_workers)


class CorpusCache:
    """Document embeddings shared by several :func:`evaluate` calls, so each corpus is encoded once.

    An entry is keyed by the model's :meth:`~lsb_mm.LSBModel.document_fingerprint` (the backbone's
    configuration and weights, and the heads only when they apply to documents), the corpus (ids,
    texts, image paths) and whether the document-side head applied; a cache can therefore serve
    several models (models that differ only in their query heads share the documents), and
    ``enhance=True`` / ``False`` share one encoding whenever documents are plain (``fusion_p=False``,
    the default). Images are keyed by path: a file changed on disk
    between calls is not seen, so use one cache per evaluation session::

        cache = lsb_mm.CorpusCache()
        with_head = lsb_mm.evaluate(model, tasks, corpus_cache=cache)
        plain = lsb_mm.evaluate(model, tasks, enhance=False, corpus_cache=cache)   # no re-encoding
    """

    def __init__(self) -> None:
        self._rows: Dict[str, np.ndarray] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    def get(self, fingerprint: str, records: List[dict], with_head: bool,
            encode: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached embeddings of ``records``, or ``encode()``'s, stored for next time."""
        h = hashlib.sha256(f"{fingerprint}|{int(with_head)}|".encode())
        for r in records:
            h.update(json.dumps([r["_id"], r.get("text"), r.get("image")]).encode())
        key = h.hexdigest()
        if key in self._rows:
            self.hits += 1
        else:
            self.misses += 1
            self._rows[key] = encode()
        return self._rows[key]


def check_ks(ks: Sequence[int]) -> List[int]:
    """Sorted distinct cut-offs; each must be a positive integer."""
    ks = list(ks) if not isinstance(ks, (str, bytes)) and hasattr(ks, "__iter__") else [ks]
    if not ks:
        raise InputError("cut-offs k must be positive integers, got none")
    return sorted({positive_int(k, "cut-offs k") for k in ks})


def primary_metric(ks: Sequence[int]) -> str:
    """NDCG@10 when 10 is a cut-off, else NDCG at the largest one."""
    return PRIMARY if 10 in ks else f"ndcg@{max(ks)}"


def evaluate(model, tasks: Union[str, Sequence[str]], ks: Sequence[int] = (1, 3, 5, 10), batch_size: int = 64,
             factory: str = "Flat", enhance: bool = True, output: Optional[str] = None,
             show_progress_bar: Optional[bool] = None, num_workers: int = 0,
             corpus_cache: Optional[CorpusCache] = None, fusion: Union[None, str, float] = None) -> Dict[str, object]:
    """Evaluate ``model`` on one or more task folders; optionally write the result as JSON.

    ``model`` is an lsb-mm model, or ``"bm25"`` for BM25 alone (:class:`lsb_mm.retrieval.bm25.BM25` over
    each task's corpus; text tasks). ``fusion`` fuses the model's ranking with BM25's: ``"rrf"``
    (reciprocal-rank fusion) or a dense weight ``w`` in [0, 1] (weighted fusion of min-max
    normalised scores; choose it on validation with :func:`choose_fusion_weight`). ``ks`` are the
    cut-offs of every metric; ``corpus_cache`` (a :class:`CorpusCache`) keeps the document
    embeddings for later calls (e.g. the same model with ``enhance=False``).
    """
    ks = check_ks(ks)
    primary = primary_metric(ks)
    folders = find_tasks([tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks))
    lexical = isinstance(model, str)
    if lexical and model != "bm25":
        raise InputError(f"model {model!r}: a string model must be 'bm25' (else pass a model from lsb_mm.create_model)")
    if fusion is not None and (lexical or not (fusion == "rrf" or isinstance(fusion, (int, float)))):
        raise InputError(f"fusion must be 'rrf' or a dense weight in [0, 1] with a dense model, got {fusion!r}"
                         + (" with BM25 alone" if lexical else ""))
    cache = CorpusCache() if corpus_cache is None else corpus_cache
    fingerprints = None if lexical else (model.fingerprint(), model.document_fingerprint())
    fingerprint = fingerprints[0] if fingerprints else None
    name = "BM25" if lexical else getattr(model, "name", "model")
    results: Dict[str, object] = {"model": name if fusion is None else f"{name} + BM25 ({_fusion_label(fusion)})",
                                  "fingerprint": fingerprint, "enhance": enhance, "primary": primary, "ks": ks,
                                  "tasks": {}}
    if fusion is not None:
        results["hybrid"] = fusion
    for folder in folders:
        task = read_task(folder)
        t0 = time.perf_counter()
        if lexical:
            t_docs, t1 = time.perf_counter() - t0, time.perf_counter()
            _, ids = _bm25_search(task, max(ks))
        else:
            ranking, t_docs, t1 = _dense_search(model, fingerprints, task, cache,
                                                max(ks) if fusion is None else max(max(ks), CANDIDATES),
                                                batch_size, factory, enhance, show_progress_bar, num_workers)
            ids = ranking[1] if fusion is None else fuse(ranking, _bm25_search(task, CANDIDATES), fusion, max(ks))[1]
        res = evaluate_ranking([qr["_id"] for qr in task.queries], ids, task.qrels, ks)
        results["tasks"][task.name] = {**res, "corpus": len(task.corpus), "folder": os.path.abspath(folder),
                                       "seconds": {"documents": round(t_docs, 3), "queries_and_search": round(time.perf_counter() - t1, 3)}}
        log.info("%s %s: %s=%.4f", results["model"], task.name, primary, res["metrics"][primary])
    if output:
        write_text(output, json.dumps(results, indent=2))
    return results


def _bm25_search(task: Task, k: int):
    """BM25 over one text task's corpus: ``(scores, ids)`` of its queries."""
    if Task.kind(task.corpus) != "text" or Task.kind(task.queries) != "text":
        raise InputError(f"task {task.name} ({task.folder}): BM25 needs text queries and documents")
    bm25 = BM25.build([d["text"] for d in task.corpus], ids=[d["_id"] for d in task.corpus])
    return bm25.search([q["text"] for q in task.queries], k=k)


def _dense_search(model, fingerprints: Tuple[str, str], task: Task, cache: CorpusCache, k: int, batch_size: int,
                  factory: str, enhance: bool, show_progress_bar: Optional[bool], num_workers: int):
    """``((scores, ids), document seconds, start of the query side)`` of the model on one task;
    ``fingerprints``: the model's (fingerprint, document fingerprint), computed once per call site."""
    fingerprint, doc_fingerprint = fingerprints
    t0 = time.perf_counter()
    # documents pass the head only with fusion_p: otherwise enhance on/off share one encoding
    docs = cache.get(doc_fingerprint, task.corpus, enhance and model.fusion["document"],
                     lambda: encode_records(model, task.corpus, "document", batch_size, enhance, show_progress_bar,
                                            num_workers))
    t_docs = time.perf_counter() - t0
    index = Index.build(docs, ids=[d["_id"] for d in task.corpus], factory=factory, fingerprint=fingerprint)
    t1 = time.perf_counter()
    q = encode_records(model, task.queries, "query", batch_size, enhance, show_progress_bar, num_workers)
    return index.search(q, k=min(k, len(task.corpus)), fingerprint=fingerprint), t_docs, t1


def _fusion_label(hybrid: Union[str, float]) -> str:
    return "RRF" if hybrid == "rrf" else f"weighted, dense weight {float(hybrid):g}"


def choose_fusion_weight(model, tasks: Union[str, Sequence[str]], weights: Sequence[float] = None,
                         metric: str = "ndcg@10", batch_size: int = 64, show_progress_bar: Optional[bool] = False
                         ) -> Dict[str, object]:
    """The dense weight of weighted fusion with the best mean ``metric`` over validation task
    folders (never the test tasks); ``{"weight", "metric", "scores": {w: value}}``. Each task is
    encoded once and searched once per side; ties go to the smaller weight."""
    weights = list(FUSION_WEIGHTS if weights is None else weights)
    ks = [int(metric.split("@")[1])] if "@" in metric else [10]
    folders = find_tasks([tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks))
    per_w: Dict[float, List[float]] = {w: [] for w in weights}
    cache = CorpusCache()
    fingerprints = (model.fingerprint(), model.document_fingerprint())
    for folder in folders:
        task = read_task(folder)
        dense, _, _ = _dense_search(model, fingerprints, task, cache, CANDIDATES, batch_size, "Flat", True,
                                    show_progress_bar, 0)
        lexical = _bm25_search(task, CANDIDATES)
        for w in weights:
            ids = fuse(dense, lexical, w, max(ks))[1]
            per_w[w].append(evaluate_ranking([qr["_id"] for qr in task.queries], ids, task.qrels, ks)["metrics"][metric])
    scores = {w: float(np.mean(v)) for w, v in per_w.items()}
    best = max(weights, key=lambda w: (scores[w], -w))
    return {"weight": best, "metric": metric, "scores": scores, "tasks": [os.path.abspath(f) for f in folders]}
