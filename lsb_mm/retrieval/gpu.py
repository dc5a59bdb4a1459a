"""Where an index runs: every GPU FAISS sees (sharded) when FAISS has a GPU implementation of its
type, else the CPU, said in the log (``device="auto"``); ``device="gpu"`` insists."""
from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from lsb_mm.errors import SearchIndexError
from lsb_mm.retrieval.binary import BinaryCodes

__all__ = ["DEVICES", "gpu_unsupported", "place_index"]

log = logging.getLogger(__name__)


def _gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


DEVICES = ("auto", "cpu", "gpu")


def gpu_unsupported(index) -> Optional[str]:
    """Why FAISS cannot move ``index`` to a GPU (the CPU type's name), or None when it can.

    FAISS clones IndexFlat, IndexIVFFlat, IndexIVFScalarQuantizer, IndexIVFPQ and an fp16
    IndexScalarQuantizer to the GPU, also inside IndexPreTransform (OPQ, PCA ...) and IndexIDMap;
    HNSW, plain PQ / SQ8, fast-scan, refine and the rest run on the CPU only.
    """
    import faiss

    if isinstance(index, BinaryCodes):
        return f"binary {type(index.index).__name__}"
    idx = faiss.downcast_index(index)
    while isinstance(idx, (faiss.IndexPreTransform, faiss.IndexIDMap)):
        idx = faiss.downcast_index(idx.index)
    name = type(idx).__name__
    if isinstance(idx, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)):
        return None
    if isinstance(idx, faiss.IndexScalarQuantizer) and idx.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        return None
    return name


def place_index(index, device: str, what: str) -> Tuple[Any, str]:
    """``(index, where)``: ``index`` moved to every GPU when ``device`` asks for it and FAISS can
    (see :func:`gpu_unsupported`), else the CPU index itself; ``what`` names it in messages."""
    import faiss

    if device not in DEVICES:
        raise SearchIndexError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    ngpu = _gpu_count() if device != "cpu" else 0
    if device == "gpu" and ngpu == 0:
        raise SearchIndexError("device='gpu' but FAISS sees no GPU (faiss.get_num_gpus() == 0)")
    if ngpu == 0:
        return index, "cpu"
    why = gpu_unsupported(index)
    if why is not None:
        if device == "gpu":
            raise SearchIndexError(f"device='gpu': FAISS has no GPU implementation of {why} (index {what}); "
                                   "use device='auto' (keeps it on the CPU) or a Flat / IVF factory")
        log.warning("index %s stays on the CPU: FAISS runs %s on the CPU only", what, why)
        return index, "cpu"
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True
    try:
        return faiss.index_cpu_to_all_gpus(index, co=co), f"gpu x{ngpu}"
    except RuntimeError as exc:
        if device == "gpu":
            raise SearchIndexError(f"device='gpu': FAISS could not move index {what} to the GPUs: {exc}") from exc
        log.warning("index %s stays on the CPU: FAISS could not move it to the GPUs: %s", what, exc)
        return index, "cpu"
