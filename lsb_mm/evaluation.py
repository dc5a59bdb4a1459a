"""``evaluate(model, task_folders)``: encode each corpus once, index it with FAISS, search, score.

Results are a JSON-able dict: per task the metrics of :mod:`lsb_mm.metrics` (primary NDCG@10, or
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
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .datasets.tasks import Task, read_task
from .errors import InputError
from .files import write_text
from .index import Index
from .metrics import PRIMARY, evaluate_run

__all__ = ["evaluate", "find_tasks", "encode_records", "CorpusCache", "primary_metric", "check_ks"]

log = logging.getLogger(__name__)


def find_tasks(paths: Sequence[str]) -> List[str]:
    """Task folders: each path is a task (has queries.jsonl) or a folder of tasks."""
    out: List[str] = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "queries.jsonl")):
            out.append(p)
        elif os.path.isdir(p):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, "queries.jsonl")))
            if not subs:
                raise InputError(f"{p} is neither a task folder (queries.jsonl, corpus.jsonl, qrels/) nor a folder of tasks")
            out += subs
        else:
            raise InputError(f"task folder {p} does not exist")
    return out


def encode_records(model, records: List[dict], role: str, batch_size: int = 64, enhance: bool = True,
                   show_progress_bar: Optional[bool] = None, num_workers: int = 0) -> np.ndarray:
    """Encode BEIR records (``text`` or ``image`` field) with the tower their kind needs."""
    if Task.kind(records) == "image":
        return model.encode_image([r["image"] for r in records], role=role, batch_size=batch_size, enhance=enhance,
                                  show_progress_bar=show_progress_bar, num_workers=num_workers)
    return model.encode_text([r["text"] for r in records], role=role, batch_size=batch_size, enhance=enhance,
                             show_progress_bar=show_progress_bar)


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
    try:
        out = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise InputError(f"cut-offs k must be positive integers, got {list(ks)!r}") from None
    if not out or out[0] < 1 or any(isinstance(k, bool) or int(k) != k for k in ks):
        raise InputError(f"cut-offs k must be positive integers, got {list(ks)!r}")
    return out


def primary_metric(ks: Sequence[int]) -> str:
    """NDCG@10 when 10 is a cut-off, else NDCG at the largest one."""
    return PRIMARY if 10 in ks else f"ndcg@{max(ks)}"


def evaluate(model, tasks: Union[str, Sequence[str]], ks: Sequence[int] = (1, 3, 5, 10), batch_size: int = 64,
             factory: str = "Flat", enhance: bool = True, output: Optional[str] = None,
             show_progress_bar: Optional[bool] = None, num_workers: int = 0,
             corpus_cache: Optional[CorpusCache] = None) -> Dict[str, object]:
    """Evaluate ``model`` on one or more task folders; optionally write the result as JSON.

    ``ks`` are the cut-offs of every metric; ``corpus_cache`` (a :class:`CorpusCache`) keeps the
    document embeddings for later calls (e.g. the same model with ``enhance=False``).
    """
    ks = check_ks(ks)
    primary = primary_metric(ks)
    folders = find_tasks([tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks))
    cache = CorpusCache() if corpus_cache is None else corpus_cache
    fingerprint, doc_fingerprint = model.fingerprint(), model.document_fingerprint()
    results: Dict[str, object] = {"model": getattr(model, "name", "model"), "fingerprint": fingerprint,
                                  "enhance": enhance, "primary": primary, "ks": ks, "tasks": {}}
    for folder in folders:
        task = read_task(folder)
        t0 = time.perf_counter()
        # documents pass the head only with fusion_p: otherwise enhance on/off share one encoding
        docs = cache.get(doc_fingerprint, task.corpus, enhance and model.fusion["document"],
                         lambda: encode_records(model, task.corpus, "document", batch_size, enhance, show_progress_bar,
                                                num_workers))
        t_docs = time.perf_counter() - t0
        index = Index.build(docs, ids=[d["_id"] for d in task.corpus], factory=factory, fingerprint=fingerprint)
        t1 = time.perf_counter()
        q = encode_records(model, task.queries, "query", batch_size, enhance, show_progress_bar, num_workers)
        _, ids = index.search(q, k=max(ks), fingerprint=fingerprint)
        run = {qr["_id"]: [i for i in row if i is not None] for qr, row in zip(task.queries, ids)}
        res = evaluate_run(run, task.qrels, ks)
        results["tasks"][task.name] = {**res, "corpus": len(task.corpus), "folder": os.path.abspath(folder),
                                       "seconds": {"documents": round(t_docs, 3), "queries_and_search": round(time.perf_counter() - t1, 3)}}
        log.info("%s %s: %s=%.4f", results["model"], task.name, primary, res["metrics"][primary])
    if output:
        write_text(output, json.dumps(results, indent=2))
    return results
