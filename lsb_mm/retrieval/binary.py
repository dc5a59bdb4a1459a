"""Binary (1 bit per dimension) embeddings in a FAISS binary index, behind the float-index calls
:class:`lsb_mm.Index` makes.

Factories are FAISS binary factory strings (``BFlat``, ``BIVF1024``, ``BHNSW32``), optionally
followed by ``,Rescore{r}``. Training learns each dimension's median ``t`` and the means ``lo`` and
``hi`` of its values at or below and above it, from a sample; each vector is then kept as one bit per dimension,
``x > t`` (packed, d/8 bytes). Thresholding at the median rather than at zero keeps the bits
informative for embeddings that are not centred (the features of a ReLU CNN are all >= 0, so
their signs are all +). A query is binarised the same way and the index returns its nearest
codes in Hamming distance ``h`` (score ``1 - 2 h / d``). With ``Rescore{r}`` it takes ``r * k``
of them and orders them by the float query's cosine with each candidate's reconstruction
(``hi`` where its bit is set, ``lo`` where not); the codes are read in place from flat and HNSW storage, and inverted
lists keep a copy. FAISS runs binary indexes on the CPU here (:func:`lsb_mm.retrieval.gpu.gpu_unsupported`).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Tuple

import numpy as np

from lsb_mm.errors import InputError

__all__ = ["BinaryCodes", "is_binary_factory", "parse_binary_factory", "binarize"]

_RESCORE = re.compile(r"^(.*?)(?:,Rescore(\d+))?$")


def is_binary_factory(factory: Any) -> bool:
    """True for a FAISS binary factory string (``BFlat``, ``BIVF..``, ``BHNSW..``), with or without ``,Rescore{r}``."""
    return isinstance(factory, str) and re.match(r"B(Flat|IVF|HNSW)", factory.replace(" ", "")) is not None


def parse_binary_factory(factory: str) -> Tuple[str, int]:
    """``"BIVF256,Rescore4"`` -> ``("BIVF256", 4)``; no suffix means no rescoring (1)."""
    m = _RESCORE.match(factory.replace(" ", ""))
    spec, rescore = m.group(1), int(m.group(2) or 1)
    if rescore < 1:
        raise InputError(f"index factory {factory!r}: Rescore needs a factor >= 1")
    return spec, rescore


def binarize(x: np.ndarray, thresholds: Optional[np.ndarray] = None) -> np.ndarray:
    """Bits of ``x [N, d]`` (1 where ``x > thresholds``, default 0), packed into ``[N, ceil(d / 8)]`` uint8."""
    x = np.asarray(x)
    return np.packbits(x > (0 if thresholds is None else thresholds), axis=1)


class BinaryCodes:
    """A FAISS binary index over the sign bits of float vectors, searched with float queries."""

    metric_type = 0  # faiss.METRIC_INNER_PRODUCT: scores grow with similarity, as in the float indexes

    def __init__(self, d: int, factory: str, index=None, codes: Optional[np.ndarray] = None,
                 params: Optional[np.ndarray] = None):
        import faiss

        self.d, self.factory = int(d), factory
        self.spec, self.rescore = parse_binary_factory(factory)
        self.bits = 8 * -(-self.d // 8)
        if index is None:
            try:
                index = faiss.index_binary_factory(self.bits, self.spec)
            except RuntimeError as exc:
                raise InputError(f"FAISS cannot build binary index factory {self.spec!r} for {self.bits} bits: "
                                 f"{str(exc).splitlines()[-1]}") from exc
        self._owner = index  # the downcast wrapper does not own the C++ object: keep its owner alive
        self.index = faiss.downcast_IndexBinary(index)
        storage = getattr(self.index, "storage", None)  # HNSW keeps its codes in an IndexBinaryFlat
        self._flat = self.index if hasattr(self.index, "xb") else \
            (faiss.downcast_IndexBinary(storage) if storage is not None else None)
        if self._flat is not None and not hasattr(self._flat, "xb"):
            self._flat = None
        # flat storage is read in place; inverted lists order codes by list, so those keep a copy
        self.codes = np.zeros((0, self.bits // 8), dtype=np.uint8) if codes is None or self._flat is not None else codes
        self._blocks = [self.codes]
        # [3, d]: per dimension the threshold (median) and the mean value below and above it, from train()
        self.params: Optional[np.ndarray] = None if params is None else np.asarray(params, dtype=np.float32)

    # the float-index calls lsb_mm.Index makes
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return self.params is not None and bool(self.index.is_trained)

    @property
    def nlist(self) -> int:
        return int(getattr(self.index, "nlist", 0))

    def train(self, x: np.ndarray) -> None:
        """Learn the thresholds and deviations from ``x`` (then FAISS's inverted lists, if any)."""
        x = np.asarray(x, dtype=np.float32)
        t = np.median(x, axis=0)
        above = x > t
        count = above.sum(0)
        hi = np.where(count > 0, (x * above).sum(0) / np.maximum(count, 1), t)
        lo = np.where(count < len(x), (x * ~above).sum(0) / np.maximum(len(x) - count, 1), t)
        self.params = np.stack([t, lo, hi]).astype(np.float32)
        if not self.index.is_trained:
            self.index.train(binarize(x, t))

    def add(self, x: np.ndarray) -> None:
        if not self.is_trained:
            raise InputError(f"binary index {self.factory!r} is not trained: train it on a sample of the vectors first")
        codes = binarize(x, self.params[0])
        self.index.add(codes)
        if self._flat is None:
            self._blocks.append(codes)

    def _all_codes(self) -> np.ndarray:
        """Every vector's packed code, in id order: a view of FAISS's flat storage, or the kept copy."""
        if self._flat is not None:
            import faiss

            n, size = int(self._flat.ntotal), int(self._flat.code_size)
            if n == 0:
                return np.zeros((0, size), dtype=np.uint8)
            return faiss.rev_swig_ptr(self._flat.xb.data(), n * size).reshape(n, size)
        if len(self._blocks) > 1:
            self.codes = np.concatenate(self._blocks)
            self._blocks = [self.codes]
        return self.codes

    def search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, dtype=np.float32)
        n = self.ntotal
        kk = min(n, k * self.rescore) if n else k
        if self.params is None:  # never trained, so never filled: nothing to find
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        t, lo, hi = self.params
        hamming, labels = self.index.search(binarize(q, t), kk)
        if self.rescore == 1 or n == 0:
            scores = 1.0 - 2.0 * hamming.astype(np.float32) / self.d
            return _pad(scores, labels, k)
        codes = self._all_codes()
        cand = np.where(labels < 0, 0, labels)
        scores = np.empty(labels.shape, dtype=np.float32)
        step = max(1, (1 << 22) // (kk * self.d))  # queries per block: the unpacked candidate bits stay near 16 MiB
        # the cosine of q with the reconstruction r = lo + (hi - lo) * bit: (q . lo + (q * (hi - lo)) . bit) / |r|
        qd, ql = q * (hi - lo), q @ lo
        sq, sl = hi * hi - lo * lo, float(lo @ lo)
        for s in range(0, len(q), step):
            bits = np.unpackbits(codes[cand[s:s + step]], axis=2)[:, :, :self.d].astype(np.float32)
            dots = np.einsum("qd,qkd->qk", qd[s:s + step], bits) + ql[s:s + step, None]
            scores[s:s + step] = dots / np.sqrt(np.maximum(bits @ sq + sl, 1e-12))
        scores[labels < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return _pad(np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1), k)

    # search parameters
    def param_name(self) -> Optional[str]:
        """Its search parameter: ``nprobe`` (inverted lists), ``efSearch`` (HNSW), or None (flat)."""
        return "nprobe" if hasattr(self.index, "nprobe") else "efSearch" if hasattr(self.index, "hnsw") else None

    def _param(self, name: str) -> Tuple[Any, str]:
        if name is None or name != self.param_name():
            raise InputError(f"binary index {self.factory!r} has no search parameter {name!r}")
        return (self.index, name) if name == "nprobe" else (self.index.hnsw, name)

    def set_param(self, name: str, value: int) -> None:
        setattr(*self._param(name), int(value))

    def get_param(self, name: str) -> int:
        return int(getattr(*self._param(name)))

    # persistence: the FAISS binary index and the packed codes (for rescoring)
    def write(self, index_path: str, codes_path: str, params_path: str) -> None:
        import faiss

        if self.params is None:
            raise InputError(f"binary index {self.factory!r} is not trained: nothing to save")
        faiss.write_index_binary(self.index, index_path)
        for path, array in ((codes_path, self._all_codes()), (params_path, self.params)):
            with open(path, "wb") as f:
                np.save(f, array, allow_pickle=False)

    @classmethod
    def read(cls, index_path: str, codes_path: str, params_path: str, d: int, factory: str) -> "BinaryCodes":
        import faiss

        index = faiss.read_index_binary(index_path)
        codes = np.load(codes_path, allow_pickle=False)
        params = np.load(params_path, allow_pickle=False)
        if params.shape != (3, d) or params.dtype != np.float32 or not np.isfinite(params).all():
            raise InputError(f"{params_path}: expected [3, {d}] finite float32 thresholds and cell means, got "
                             f"{params.shape} {params.dtype}")
        self = cls(d, factory, index=index, codes=codes, params=params)
        if self.index.d != self.bits or codes.dtype != np.uint8 or codes.shape != (self.ntotal, self.bits // 8):
            raise InputError(f"{index_path}: binary index of {self.index.d} bits and codes {codes.shape} {codes.dtype} "
                             f"do not fit dimension {d} ({self.ntotal} vectors of {self.bits // 8} bytes expected)")
        if self._flat is not None and not np.array_equal(self._all_codes(), codes):
            raise InputError(f"{codes_path}: the codes differ from those in {index_path}")
        return self

    def memory_bytes(self) -> int:
        """Bytes held: FAISS's serialised binary index, plus the kept copy of the codes (inverted lists only)."""
        import faiss

        kept = 0 if self._flat is not None else int(self._all_codes().nbytes)
        return int(faiss.serialize_index_binary(self.index).nbytes) + kept


def _pad(scores: np.ndarray, labels: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Widen to ``k`` columns (score -inf, label -1) when the index holds fewer than ``k`` vectors."""
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape[1] < k:
        extra = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        labels = np.pad(labels, ((0, 0), (0, extra)), constant_values=-1)
    scores[labels < 0] = -np.inf
    return scores, labels
