"""Encoding jobs over work units: one process (``local``) or Ray Data actors (``ray``).

Both engines run :func:`encode_unit` on each unfinished unit of an :class:`~lsb_mm.scale.shards.EmbeddingShards`
folder: read the unit's documents (:func:`lsb_mm.data.readers.read_unit`), encode them with
role=document and the same batch size as the single-process path, write the shard. A unit is the
unit of retry: a worker that dies mid-unit leaves no finished shard, and the unit runs again.

With Ray, the model is built once per actor (one actor per GPU when Ray sees GPUs, else
``workers`` actors of one CPU each); ``address`` joins a running cluster (its workers must see the
same paths), else Ray starts locally.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from lsb_mm.data.readers import Unit, read_unit
from lsb_mm.errors import InputError, LSBError, positive_int

__all__ = ["ENGINES", "encode_documents", "encode_unit", "run_job"]

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")


def _build_model(spec: Dict[str, Any]):
    from lsb_mm.models.factory import create_model

    return create_model(**spec)


def encode_documents(model, docs, batch_size: int, windows: Union[int, Sequence[int]], num_workers: int = 0,
                     show_progress_bar: bool = False) -> np.ndarray:
    """``[N, d]`` float32 document embeddings of ``docs``, encoded window by window (``windows``: a
    size, or the sizes in order): the windows of a job are its units, so that one process and
    many give the same batches (texts are sorted by length within a window) and the same bits."""
    from tqdm.auto import tqdm

    n = len(docs.ids)
    sizes = [windows] * (-(-n // windows)) if isinstance(windows, int) else list(windows)
    out = np.empty((n, model.embed_dim), dtype=np.float32)
    start = 0
    with tqdm(total=n, unit="doc", desc=f"encode {docs.kind}s", disable=not show_progress_bar, dynamic_ncols=True) as bar:
        for size in sizes:
            items = docs.items[start:start + size]
            if not items:
                break
            out[start:start + len(items)] = model.encode(items, docs.kind, "document", batch_size=batch_size,
                                                         num_workers=num_workers, show_progress_bar=False)
            start += len(items)
            bar.update(len(items))
    return out


def encode_unit(model, unit: Unit, shards, batch_size: int, num_workers: int = 0) -> int:
    """Encode and write one unit's shard; returns its document count."""
    docs = read_unit(unit)
    shards.write(unit, encode_documents(model, docs, batch_size, len(docs.ids), num_workers), docs)
    return len(docs.ids)


class _Progress:
    """Items/s overall and per worker, on a tqdm bar (or silent)."""

    def __init__(self, total_items: int, done_items: int, show: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_items, initial=done_items, unit="doc", desc="encode shards", disable=not show,
                        dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.per_worker: Dict[str, List[float]] = {}  # worker -> [items, seconds]
        self.items = 0

    def update(self, worker: str, items: int, seconds: float) -> None:
        w = self.per_worker.setdefault(worker, [0, 0.0])
        w[0] += items
        w[1] += seconds
        self.items += items
        self.bar.update(items)
        self.bar.set_postfix_str(" ".join(f"{k}:{v[0] / max(v[1], 1e-9):.0f}/s" for k, v in sorted(self.per_worker.items())))

    def close(self) -> Dict[str, Any]:
        self.bar.close()
        wall = time.perf_counter() - self.t0
        return {"items": self.items, "seconds": round(wall, 2), "items_per_s": round(self.items / wall, 1) if wall else None,
                "workers": {k: {"items": int(v[0]), "items_per_s": round(v[0] / v[1], 1) if v[1] else None}
                            for k, v in sorted(self.per_worker.items())}}


def run_job(shards, model_spec: Dict[str, Any], engine: str = "local", replicas: int = 1, batch_size: int = 64,
            address: Optional[str] = None, show_progress_bar: bool = True, num_workers: int = 0,
            model=None) -> Dict[str, Any]:
    """Encode every unfinished unit of ``shards`` with the model :func:`lsb_mm.create_model` builds
    from ``model_spec`` (``local``: ``model`` itself when given); returns what ran (units, items,
    items/s overall and per worker, and the units skipped because they were finished)."""
    from lsb_mm.data.readers import clear_cache

    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {list(ENGINES)}, got {engine!r}")
    positive_int(replicas, "--replicas")
    todo = shards.todo()
    skipped = len(shards.units) - len(todo)
    done_items = sum(len(u) for u in shards.units) - sum(len(u) for u in todo)
    progress = _Progress(sum(len(u) for u in shards.units), done_items, show_progress_bar)
    if skipped:
        log.info("%d of %d shards are finished already: skipped", skipped, len(shards.units))
    try:
        if todo and engine == "local":
            model = model if model is not None else _build_model(model_spec)
            for unit in todo:
                t0 = time.perf_counter()
                n = encode_unit(model, unit, shards, batch_size, num_workers)
                progress.update(f"pid{os.getpid()}", n, time.perf_counter() - t0)
        elif todo:
            _run_ray(shards, todo, model_spec, replicas, batch_size, address, progress)
    finally:
        stats = progress.close()
        clear_cache()
    return {"engine": engine, "units": len(todo), "skipped_units": skipped, **stats}


UNIT_RETRIES = 3  # a unit whose worker dies this many times more (e.g. killed for memory) fails the job

class _RayEncoder:
    """A Ray Data actor: the model built once, then one unit (a batch of one row) per call."""

    def __init__(self, spec: Dict[str, Any], folder: str, batch_size: int, threads: int):
        import torch

        from lsb_mm.scale.shards import EmbeddingShards

        torch.set_num_threads(threads)
        self.model = _build_model(spec)
        self.shards = EmbeddingShards.open(folder)
        self.batch_size = batch_size
        self.worker = f"pid{os.getpid()}"

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import json

        out: Dict[str, list] = {"shard": [], "items": [], "seconds": [], "worker": []}
        for text in batch["unit"]:
            unit = Unit.from_dict(json.loads(text))
            t0 = time.perf_counter()
            n = encode_unit(self.model, unit, self.shards, self.batch_size)
            out["shard"].append(unit.shard)
            out["items"].append(n)
            out["seconds"].append(time.perf_counter() - t0)
            out["worker"].append(self.worker)
        return {k: np.asarray(v) for k, v in out.items()}


def _ray_init(address: Optional[str], workers: int):
    import ray

    if ray.is_initialized():
        return ray
    kw: Dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
    if address:
        kw["address"] = address
    else:
        kw["num_cpus"] = max(workers, 1)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(**kw)
    return ray


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what Ray's threads and processes print (``(raylet) Task ... failed ... will be retried``)
    to stderr: the CLI's stdout carries its one JSON report and nothing else."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_ray(shards, todo: List[Unit], spec: Dict[str, Any], workers: int, batch_size: int, address: Optional[str],
             progress: _Progress) -> None:
    from lsb_mm.errors import require_extra

    require_extra("scale", "--engine ray", "ray", "ray.data")
    import ray

    started = not ray.is_initialized()  # a Ray the caller started is theirs to stop
    with _stdout_to_stderr():
        try:
            _ray_job(_ray_init(address, workers), shards, todo, spec, workers, batch_size, progress)
        finally:
            if started:
                ray.shutdown()  # before the report: no late message from Ray's threads


def _ray_job(ray, shards, todo: List[Unit], spec: Dict[str, Any], workers: int, batch_size: int,
             progress: _Progress) -> None:
    import json

    gpus = int(ray.cluster_resources().get("GPU", 0))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False
    actors = gpus if gpus else workers
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    spec = dict(spec, device="cuda" if gpus else "cpu")
    ds = ray.data.from_items([{"unit": json.dumps(u.to_dict())} for u in todo], override_num_blocks=len(todo))
    out = ds.map_batches(_RayEncoder, batch_size=1, concurrency=actors, **resources,
                         fn_constructor_kwargs={"spec": spec, "folder": shards.folder, "batch_size": batch_size,
                                                "threads": 1},
                         max_restarts=-1, max_task_retries=UNIT_RETRIES)  # a dead actor restarts, its unit reruns
    try:
        for row in out.iter_rows():
            progress.update(str(row["worker"]), int(row["items"]), float(row["seconds"]))
    except Exception as exc:  # a user mistake inside a worker (an unreadable image ...) is said as such
        cause: Optional[BaseException] = exc
        while cause is not None and not isinstance(cause, LSBError):
            cause = cause.__cause__ or getattr(cause, "cause", None)
        if cause is not None:
            raise cause from None
        raise
