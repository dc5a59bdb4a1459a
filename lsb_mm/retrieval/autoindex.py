"""``factory="auto"``: a FAISS index chosen from corpus size, dimension and a memory budget, and
its search parameter (``nprobe`` / ``efSearch``) tuned on held-out queries to a target recall.

The ladder, as autofaiss climbs it: exact ``Flat`` while it is small enough to scan; ``HNSW32``
up to a few million vectors when its graph fits; ``IVF{nlist},Flat`` when the raw vectors fit;
``IVF{nlist},SQ8`` (one byte per dimension) when those fit;
``IVF{nlist},PQ{m}x4fsr`` (4-bit fast-scan product codes on the residuals, m/2 bytes per vector)
when only codes fit. OPQ is left out: its rotation took minutes to train on a few thousand vectors
here (``OPQ...`` factories can still be given by hand, and are estimated).
Every estimate below is the memory FAISS holds for the index, in bytes.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from lsb_mm.errors import InputError

__all__ = ["Choice", "choose_factory", "estimate_memory", "parse_memory", "tune_search", "FLAT_MAX", "HNSW_MAX"]

FLAT_MAX = 200_000  # exact search scans at most this many vectors per query by default
HNSW_MAX = 5_000_000  # beyond this HNSW builds too slowly on CPUs; IVF takes over
HNSW_M = 32
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}


@dataclass
class Choice:
    """The chosen ``factory``, its estimated ``memory`` (bytes), and why it was chosen."""
    factory: str
    memory: int
    reason: str
    nlist: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def parse_memory(text: Any) -> int:
    """``"4G"``, ``"512MB"``, ``"1.5T"`` or a number of bytes -> bytes (binary units)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text > 0:
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"memory size {text!r}: expected a positive size such as 512M, 4G or 1.5T")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _nlist(n: int) -> int:
    """Inverted lists: a power of two near 4 sqrt(n), with at least 39 training vectors per list."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return int(min(nlist, 1 << 18))


def estimate_memory(factory: str, n: int, d: int) -> int:
    """Bytes FAISS holds for ``factory`` over ``n`` vectors of dimension ``d`` (ids not included:
    lsb-mm keeps them beside the index)."""
    f = factory.replace(" ", "")
    opq = re.match(r"OPQ(\d+)(?:_(\d+))?,", f)
    extra = 0
    if opq:
        extra += 4 * d * int(opq.group(2) or d)
        f = f[opq.end():]
    if f == "Flat":
        return extra + 4 * n * d
    m = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", f)
    if m:  # level 0 keeps 2M neighbours, upper levels about M / (M - 1) more on average; int32 each
        links = int(m.group(1)) * 2 * 4 * 1.07
        return extra + int(n * (4 * d + links))
    m = re.fullmatch(r"IVF(\d+),(Flat|SQ8|SQfp16|PQ(\d+)(?:x(\d+))?(?:fsr?|np)?)", f)
    if m:
        nlist = int(m.group(1))
        code = {"Flat": 4 * d, "SQ8": d, "SQfp16": 2 * d}.get(m.group(2))
        if code is None:
            bits = int(m.group(4) or 8)
            code = -(-int(m.group(3)) * bits // 8)
            extra += 4 * d * (2 ** bits)  # PQ codebooks
        return extra + 4 * nlist * d + n * (code + 8)  # centroids + codes + the ids in the inverted lists
    m = re.fullmatch(r"(SQ8|SQfp16|PQ(\d+)(?:x(\d+))?(?:fs|np)?)", f)
    if m:
        code = {"SQ8": d, "SQfp16": 2 * d}.get(m.group(1))
        if code is None:
            bits = int(m.group(3) or 8)
            code = -(-int(m.group(2)) * bits // 8)
            extra += 4 * d * (2 ** bits)
        return extra + n * code
    m = re.fullmatch(r"B(Flat|IVF(\d+)(?:_HNSW\d+)?|HNSW(\d+))(?:,Rescore\d+)?", f)
    if m:  # FAISS's binary codes (inverted lists: and the copy lsb-mm keeps for rescoring, lsb_mm.retrieval.binary)
        code = -(-d // 8)
        if m.group(2):
            return extra + code * int(m.group(2)) + n * (2 * code + 8)
        if m.group(3):
            return extra + int(n * (code + int(m.group(3)) * 2 * 4 * 1.07))
        return extra + n * code
    raise InputError(f"no memory estimate for factory {factory!r}")


def choose_factory(n: int, d: int, max_memory: Optional[int] = None) -> Choice:
    """The cheapest accurate factory for ``n`` vectors of dimension ``d`` within ``max_memory`` bytes
    (None: no budget), following the ladder in the module docstring."""
    if n < 1 or d < 1:
        raise InputError(f"choose_factory: need n >= 1 and d >= 1, got {n}, {d}")
    budget = float("inf") if max_memory is None else int(max_memory)
    say = "no memory budget" if max_memory is None else f"budget {_size(budget)}"
    flat = estimate_memory("Flat", n, d)
    if n <= FLAT_MAX and flat <= budget:
        return Choice("Flat", flat, f"{n} vectors: exact search is fast enough ({_size(flat)}, {say})")
    hnsw = f"HNSW{HNSW_M}"
    if n <= HNSW_MAX and estimate_memory(hnsw, n, d) <= budget:
        return Choice(hnsw, estimate_memory(hnsw, n, d), f"{n} vectors: a graph index ({say})")
    nlist = _nlist(n)
    ivf = f"IVF{nlist},Flat"
    if estimate_memory(ivf, n, d) <= budget:
        return Choice(ivf, estimate_memory(ivf, n, d), f"{n} vectors: inverted lists over the raw vectors ({say})", nlist)
    sq8 = f"IVF{nlist},SQ8"
    if estimate_memory(sq8, n, d) <= budget:
        return Choice(sq8, estimate_memory(sq8, n, d), f"{n} vectors: inverted lists over 8-bit scalar codes ({say})", nlist)
    smallest = None
    for m in sorted({m for m in range(2, min(d, 256) + 1, 2) if d % m == 0}, reverse=True):  # the longest code that fits
        for nl in sorted({max(16, nlist // 4), max(16, nlist // 2), nlist}, reverse=True):  # fewer lists free centroid memory
            smallest = f"IVF{nl},PQ{m}x4fsr"
            mem = estimate_memory(smallest, n, d)
            if mem <= budget:
                return Choice(smallest, mem, f"{n} vectors: {m // 2}-byte product-quantised codes fit ({say})", nl)
    raise InputError(f"no index of {n} vectors of dimension {d} fits in {_size(budget)}: the smallest "
                     f"({smallest}) needs {_size(estimate_memory(smallest or 'Flat', n, d))}; raise "
                     "--max-index-memory or shard the corpus (--shard i/n)")


def _size(b: float) -> str:
    if b == float("inf"):
        return "unbounded"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return str(b)


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int, batch: int = 65536) -> np.ndarray:
    """Row numbers of the exact top-``k`` inner products of ``queries`` in ``x`` (batched over ``x``)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(x), batch):
        s = queries @ x[start:start + batch].T
        i = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (Recall@k against exact search)."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


EF_SEARCH_VALUES = [16, 32, 64, 128, 256, 512, 1024, 2048]  # what tune_search tries for HNSW


def _nprobe_values(nlist: int) -> List[int]:
    """What tune_search tries for inverted lists: the powers of two up to ``nlist``, and ``nlist``."""
    return sorted({min(nlist, 2 ** p) for p in range(0, int(math.log2(nlist)) + 1)} | {nlist})


def _search_knob(index, k: int):
    """``(name, values to try, setter)`` of the search parameter of a FAISS (or lsb-mm binary)
    index: ``efSearch`` for HNSW, ``nprobe`` for inverted lists; None for exact indexes."""
    import faiss

    from lsb_mm.retrieval.binary import BinaryCodes

    if isinstance(index, BinaryCodes):
        name = index.param_name()
        if name is None:
            return None
        values = _nprobe_values(index.nlist) if name == "nprobe" else EF_SEARCH_VALUES
        return name, values, lambda v: index.set_param(name, max(v, k) if name == "efSearch" else v)
    base = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if hasattr(base, "hnsw"):
        def set_ef(v):
            base.hnsw.efSearch = max(v, k)
        return "efSearch", EF_SEARCH_VALUES, set_ef
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None

    def set_nprobe(v):
        ivf.nprobe = v
    return "nprobe", _nprobe_values(ivf.nlist), set_nprobe


def tune_search(index, queries: np.ndarray, truth: np.ndarray, target_recall: float, k: int = 10) -> Dict[str, Any]:
    """Set the smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) of the FAISS ``index`` whose Recall@k
    on ``queries`` against ``truth`` (exact row numbers) reaches ``target_recall`` (when none does,
    the smallest within 0.005 of the best recall seen: no speed is given up for nothing); returns
    what was tried. Exact indexes have nothing to tune."""
    if not 0 < target_recall <= 1:
        raise InputError(f"target recall must be in (0, 1], got {target_recall}")
    tried: List[Dict[str, Any]] = []
    knob = _search_knob(index, k)
    if knob is None:
        r = recall_at(index.search(queries, k)[1], truth)
        return {"param": None, "value": None, "recall": r, "met": r >= target_recall, "tried": []}
    name, values, set_value = knob
    chosen = None
    for v in values:
        set_value(v)
        r = recall_at(index.search(queries, k)[1], truth)
        tried.append({name: v, "recall": round(r, 4)})
        if r >= target_recall:
            chosen = (v, r)
            break
    if chosen is None:  # out of reach: the smallest value within 0.005 of the best recall seen
        best = max(t["recall"] for t in tried)
        first = next(t for t in tried if t["recall"] >= best - 0.005)
        chosen = (first[name], first["recall"])
    set_value(chosen[0])
    return {"param": name, "value": chosen[0], "recall": chosen[1], "met": chosen[1] >= target_recall, "tried": tried}
