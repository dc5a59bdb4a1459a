"""``evaluate(model, task_folders)``: encode each corpus once, index it with FAISS, search, score.

Results are a JSON-able dict: per task the metrics of :mod:`lsb_mm.metrics` (primary NDCG@10),
sizes and timings. ``enhance=False`` scores the plain backbone, so heads can be reported side by
side with it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .datasets.tasks import Task, read_task
from .errors import InputError
from .index import Index
from .metrics import PRIMARY, evaluate_run

__all__ = ["evaluate", "find_tasks", "encode_records"]

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


def _corpus_key(records: List[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["_id"], r.get("text"), r.get("image")]).encode())
    return h.hexdigest()


def evaluate(model, tasks: Union[str, Sequence[str]], ks: Sequence[int] = (1, 3, 5, 10), batch_size: int = 64,
             factory: str = "Flat", enhance: bool = True, output: Optional[str] = None,
             show_progress_bar: Optional[bool] = None, num_workers: int = 0,
             _corpus_cache: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, object]:
    """Evaluate ``model`` on one or more task folders; optionally write the result as JSON."""
    folders = find_tasks([tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks))
    cache = {} if _corpus_cache is None else _corpus_cache  # documents are encoded once per model
    fingerprint = model.fingerprint()
    results: Dict[str, object] = {"model": getattr(model, "name", "model"), "fingerprint": fingerprint,
                                  "enhance": enhance, "primary": PRIMARY, "tasks": {}}
    for folder in folders:
        task = read_task(folder)
        t0 = time.perf_counter()
        # documents pass the head only with fusion_p: otherwise enhance on/off share one encoding
        key = _corpus_key(task.corpus) + ("+head" if enhance and model.fusion["document"] else "")
        if key not in cache:
            cache[key] = encode_records(model, task.corpus, "document", batch_size, enhance, show_progress_bar, num_workers)
        docs = cache[key]
        t_docs = time.perf_counter() - t0
        index = Index.build(docs, ids=[d["_id"] for d in task.corpus], factory=factory, fingerprint=fingerprint)
        t1 = time.perf_counter()
        q = encode_records(model, task.queries, "query", batch_size, enhance, show_progress_bar, num_workers)
        _, ids = index.search(q, k=max(ks), fingerprint=fingerprint)
        run = {qr["_id"]: [i for i in row if i is not None] for qr, row in zip(task.queries, ids)}
        res = evaluate_run(run, task.qrels, ks)
        results["tasks"][task.name] = {**res, "corpus": len(task.corpus), "folder": os.path.abspath(folder),
                                       "seconds": {"documents": round(t_docs, 3), "queries_and_search": round(time.perf_counter() - t1, 3)}}
        log.info("%s %s: %s=%.4f", results["model"], task.name, PRIMARY, res["metrics"][PRIMARY])
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output + ".tmp", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        os.replace(output + ".tmp", output)
    return results
