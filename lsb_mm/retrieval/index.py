"""FAISS searcher: build from embeddings with an index-factory string, search in batches, persist.

* inner product on L2-normalised vectors (cosine), string ids of any kind, optional metadata;
* ``device="auto"`` puts the index on every GPU FAISS sees (sharded) when FAISS has a GPU
  implementation of its type (Flat, IVF-Flat, IVF-SQ, IVF-PQ, SQfp16; also behind OPQ / PCA),
  else keeps it on the CPU and says so; ``device="gpu"`` insists (an error otherwise);
* ``save(folder)`` writes ``manifest.json`` (dimension, metric, factory, count, model fingerprint,
  library versions, checksum) + ``index.faiss`` + ``ids.jsonl`` (+ ``metadata.jsonl``),
  atomically; ``Index.load(folder)`` validates all of it; ``Index.load([f1, f2, ...])`` searches
  several shards together (``faiss.IndexShards``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lsb_mm.retrieval.binary import BinaryCodes, is_binary_factory
from lsb_mm.errors import InputError, positive_int
from lsb_mm.errors import SearchIndexError
from lsb_mm.files import atomic_folder
from lsb_mm.retrieval.gpu import place_index
from lsb_mm.retrieval.index_folder import read_bm25, read_folder, write_folder

__all__ = ["Index", "DEFAULT_ANN", "SearchIndexError"]

log = logging.getLogger(__name__)
DEFAULT_ANN = "HNSW32"
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256


def _as_matrix(x, what: str, dim: Optional[int] = None, check_norm: bool = True) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise SearchIndexError(f"{what} must be a non-empty [N, d] matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise SearchIndexError(f"{what} have dimension {x.shape[1]}, the index holds dimension {dim}")
    if not np.isfinite(x).all():
        raise SearchIndexError(f"{what} contain NaN or infinite values")
    if check_norm:
        norms = np.linalg.norm(x, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1) > 1e-3)
        if bad.size:
            raise SearchIndexError(f"{what} must be L2-normalised (row {bad[0]} has norm {norms[bad[0]]:.4f}); "
                              "encode with lsb-mm (it normalises) or pass normalize=True")
    return np.ascontiguousarray(x)


def _normalize(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)


TRAIN_PER_LIST = 64  # training vectors per inverted list (a random sample of the corpus beyond that)
TRAIN_MAX = 262_144  # training vectors of a factory without inverted lists (FAISS's PQ uses 65,536 at most)


class Index:
    """A FAISS index with string ids, metadata and a manifest. Build with :meth:`build`."""

    def __init__(self, index, dim: int, factory: str, ids: List[str], metadata: Optional[List[Dict[str, Any]]] = None,
                 fingerprint: Optional[str] = None, device: str = "cpu"):
        self._index, self.dim, self.factory = index, int(dim), factory
        self.ids, self.metadata, self.fingerprint, self.device = list(ids), metadata, fingerprint, device
        self.metric = "ip"
        self._id_set = set(self.ids)
        self._lookup: Optional[np.ndarray] = None  # ids as an object array (+ None for missing), built once
        self.bm25 = None  # an optional lexical side (lsb_mm.retrieval.bm25.BM25) over the same ids: add_bm25
        self._shards: Optional[list] = None
        self._warned_unchecked = False  # the "no fingerprint to check" warning, once per index
        self.build_info: Dict[str, Any] = {}  # factory "auto": the choice and the search tuning

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings, ids: Optional[Sequence[Any]] = None, metadata: Optional[Sequence[Dict[str, Any]]] = None,
              factory: str = "Flat", device: str = "auto", fingerprint: Optional[str] = None,
              normalize: bool = False, max_memory: Union[int, str, None] = None,
              target_recall: Optional[float] = None, tune_queries: int = 1000, seed: int = 0) -> "Index":
        """Index ``embeddings [N, d]`` (L2-normalised; ``normalize=True`` does it) with a FAISS
        index-factory string (``Flat``, ``HNSW32``, ``IVF1024,Flat``, ``IVF256,PQ16`` ...),
        training the index first when the factory needs it.

        ``factory="auto"`` chooses one from N, d and ``max_memory`` (bytes, or ``"4G"``; see
        :func:`lsb_mm.retrieval.autoindex.choose_factory`). With ``target_recall`` (default 0.95 for ``auto``)
        ``nprobe`` / ``efSearch`` is set to the smallest value whose Recall@10 against exact search
        reaches it on ``tune_queries`` of the vectors drawn as queries; ``build_info`` records both.
        """
        import faiss

        from lsb_mm.retrieval.autoindex import choose_factory, parse_memory

        from lsb_mm.scale.shards import ShardRows

        if isinstance(embeddings, ShardRows):  # streamed from embedding shards, a block at a time
            x = embeddings
            if len(x) == 0:
                raise SearchIndexError("embeddings must be a non-empty [N, d] matrix, got no rows")
        else:
            m = _as_matrix(embeddings, "embeddings", check_norm=not normalize)
            x = ShardRows([_normalize(m) if normalize else m])
        n, d = x.shape
        ids = None if ids is None else list(ids)
        metadata = None if metadata is None else list(metadata)
        for what, given in (("ids", ids), ("metadata rows", metadata)):
            if given is not None and len(given) != n:
                raise SearchIndexError(f"{len(given)} {what} for {n} embeddings")
        build_info: Dict[str, Any] = {}
        if factory == "auto":
            choice = choose_factory(n, d, None if max_memory is None else parse_memory(max_memory))
            factory, build_info["auto"] = choice.factory, choice.to_dict()
            log.info("factory auto: %s (%s)", choice.factory, choice.reason)
            target_recall = 0.95 if target_recall is None else target_recall
        if not isinstance(factory, str) or "IDMap" in factory:
            raise SearchIndexError(f"index factory {factory!r}: give a FAISS factory string without IDMap "
                                   "(lsb_mm.Index keeps its own ids)")
        try:
            index = BinaryCodes(d, factory) if is_binary_factory(factory) else \
                faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except (RuntimeError, InputError) as exc:
            raise SearchIndexError(f"FAISS cannot build index factory {factory!r} for dimension {d}: {exc}") from exc
        _tune_new(index)
        self = cls(index, d, factory, [], None, fingerprint, "cpu")
        if not index.is_trained:
            _train(index, x, factory, seed)
        if target_recall is not None:
            positive_int(tune_queries, "tune_queries", SearchIndexError)
        else:
            self._to_device(device)
        for start, block in x.chunks():  # tuned on the CPU index, then moved
            end = start + block.shape[0]
            self.add(block, None if ids is None else ids[start:end], None if metadata is None else metadata[start:end])
        if target_recall is None:
            self.build_info = build_info
            return self
        build_info["tuning"] = _tune_search(index, x, target_recall, tune_queries, seed, factory)
        self.build_info = build_info
        self._to_device(device)
        return self

    def _to_device(self, device: str) -> None:
        self._index, self.device = place_index(self._index, device, self.factory)
        log.info("index %s on %s", self.factory, self.device)

    def add(self, embeddings, ids: Optional[Sequence[Any]] = None, metadata: Optional[Sequence[Dict[str, Any]]] = None) -> None:
        """Append vectors with their ids (default: their running numbers as strings) and metadata."""
        x = _as_matrix(embeddings, "embeddings", self.dim)
        n0 = len(self.ids)
        new_ids = [str(n0 + i) for i in range(x.shape[0])] if ids is None else [str(i) for i in ids]
        if len(new_ids) != x.shape[0]:
            raise SearchIndexError(f"{len(new_ids)} ids for {x.shape[0]} embeddings")
        dup = [i for i in new_ids if i in self._id_set]
        if dup or len(set(new_ids)) != len(new_ids):
            raise SearchIndexError(f"duplicate id {(dup or [i for i in new_ids if new_ids.count(i) > 1])[0]!r}; ids must be unique")
        if metadata is not None and len(metadata) != x.shape[0]:
            raise SearchIndexError(f"{len(metadata)} metadata rows for {x.shape[0]} embeddings")
        if self.bm25 is not None:
            raise SearchIndexError("this index has a BM25 side, which cannot grow: add every vector first, then add_bm25")
        if (metadata is None) != (self.metadata is None) and n0:
            raise SearchIndexError("give metadata for every batch added, or for none")
        self._index.add(x)
        self._lookup = None
        self.ids.extend(new_ids)
        self._id_set.update(new_ids)
        if metadata is not None:
            if self.metadata is None:
                self.metadata = []
            self.metadata.extend(dict(m) for m in metadata)

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, fingerprint: Optional[str] = None, batch_size: int = 4096,
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query: ``(scores [Q, k] float32, ids [Q, k] object)``.

        ``k`` is capped at the index size (``min(k, len(index))`` columns); slots an approximate
        index cannot fill hold score ``-inf`` and id ``None``. ``fingerprint`` (the query model's
        :meth:`~lsb_mm.LSBModel.fingerprint`) is checked against the index's.
        """
        if fingerprint is not None and self.fingerprint is None and not self._warned_unchecked:
            self._warned_unchecked = True
            log.warning("this index records no model fingerprint (built without one): the query model cannot be "
                        "checked against the model that built it")
        if fingerprint is not None and self.fingerprint is not None and fingerprint != self.fingerprint:
            raise SearchIndexError(f"the queries come from model {fingerprint}, the index was built from model "
                              f"{self.fingerprint}; encode with the same model (or rebuild the index)")
        k = min(positive_int(k, "k", SearchIndexError), len(self))
        q = _as_matrix(queries, "queries", self.dim, check_norm=False)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        labels = np.empty((q.shape[0], k), dtype=np.int64)
        for s in range(0, q.shape[0], batch_size):
            scores[s:s + batch_size], labels[s:s + batch_size] = self._index.search(q[s:s + batch_size], k)
        if self._lookup is None:
            self._lookup = np.asarray(self.ids + [None], dtype=object)
        ids = self._lookup[np.where(labels < 0, len(self.ids), labels)]
        scores[labels < 0] = -np.inf
        return scores, ids

    def add_bm25(self, texts: Sequence[str]) -> None:
        """Index ``texts`` (one per vector, in order: the documents' texts or captions) with BM25
        beside the vectors; :meth:`search_hybrid` then fuses both rankings, :meth:`save` keeps it."""
        from lsb_mm.retrieval.bm25 import BM25

        texts = list(texts)
        if len(texts) != len(self.ids):
            raise SearchIndexError(f"{len(texts)} texts for the BM25 side of an index of {len(self.ids)} vectors")
        if self._shards is not None:
            raise SearchIndexError("a set of shards has no single BM25 side; build it on each shard before saving")
        self.bm25 = BM25.build(texts, self.ids)

    def check_hybrid(self) -> None:
        """Raise :class:`SearchIndexError` saying why :meth:`search_hybrid` cannot run, if it cannot."""
        if self._shards is not None:
            raise SearchIndexError("hybrid search over several shards is not supported (BM25 statistics are per "
                                   "shard): search one index folder")
        if self.bm25 is None:
            raise SearchIndexError("this index has no BM25 side: build it with `lsb-mm index --bm25` (Index.add_bm25)")

    def search_hybrid(self, queries, texts: Sequence[str], k: int = 10, fusion: Union[str, float] = "rrf",
                      fingerprint: Optional[str] = None) -> Tuple[List[List[float]], List[List[str]]]:
        """Fuse the dense ranking of ``queries`` (embeddings) with BM25's of ``texts`` (the same
        queries as text): ``fusion`` ``"rrf"`` or a dense weight in [0, 1]. Returns ``(fused scores,
        ids)`` per query, best first: FAISS's ``(D, I)`` order, like :meth:`search`."""
        from lsb_mm.retrieval.fusion import CANDIDATES, fuse

        self.check_hybrid()
        texts = list(texts)
        k = min(positive_int(k, "k", SearchIndexError), len(self))
        depth = min(max(k, CANDIDATES), len(self))
        scores, ids = self.search(queries, k=depth, fingerprint=fingerprint)
        if len(texts) != len(ids):
            raise SearchIndexError(f"{len(texts)} query texts for {len(ids)} query embeddings")
        return fuse((scores, [list(r) for r in ids]), self.bm25.search(texts, k=depth), fusion, k)

    def set_search_params(self, **params: Any) -> None:
        """FAISS search parameters, e.g. ``nprobe=32`` (IVF) or ``efSearch=256`` (HNSW)."""
        import faiss

        if isinstance(self._index, BinaryCodes):
            for name, value in params.items():
                try:
                    self._index.set_param(name, value)
                except InputError as exc:
                    raise SearchIndexError(str(exc)) from None
            return
        ps = faiss.GpuParameterSpace() if "gpu" in self.device else faiss.ParameterSpace()
        for name, value in params.items():
            try:
                ps.set_index_parameter(self._index, name, value)
            except RuntimeError as exc:
                raise SearchIndexError(f"index {self.factory!r} has no search parameter {name!r}: {exc}") from exc

    @property
    def nprobe(self) -> int:
        import faiss

        if isinstance(self._index, BinaryCodes):
            return self._binary_param("nprobe")
        return int(faiss.extract_index_ivf(self._cpu_view()).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.set_search_params(nprobe=int(value))

    @property
    def ef_search(self) -> int:
        if isinstance(self._index, BinaryCodes):
            return self._binary_param("efSearch")
        return int(_hnsw(self._cpu_view()).efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.set_search_params(efSearch=int(value))

    def _binary_param(self, name: str) -> int:
        try:
            return self._index.get_param(name)
        except InputError as exc:
            raise SearchIndexError(str(exc)) from None

    def _cpu_view(self):
        import faiss

        idx = self._index
        if isinstance(idx, faiss.IndexShards) or "gpu" in self.device:
            raise SearchIndexError("read the parameter on a single CPU index; set it with set_search_params")
        return idx

    def memory_bytes(self) -> int:
        """Bytes the vector index holds (its serialised FAISS form; binary inverted lists add the
        copy of their codes kept for rescoring); ids, metadata and BM25 are not counted."""
        import faiss

        if isinstance(self._index, BinaryCodes):
            return self._index.memory_bytes()
        shards = self._shards if self._shards is not None else [self._index]
        cpu = [faiss.index_gpu_to_cpu(s) if "gpu" in self.device else s for s in shards]
        return int(sum(faiss.serialize_index(c).nbytes for c in cpu))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Index({self.factory!r}, n={len(self)}, dim={self.dim}, device={self.device!r}, model={self.fingerprint})"

    # -- persistence ----------------------------------------------------------------------------
    def save(self, folder: str) -> str:
        """Write the index folder atomically (a crash never leaves a folder that loads)."""
        import faiss

        cpu = faiss.index_gpu_to_cpu(self._index) if self.device.startswith("gpu") else self._index
        if isinstance(cpu, faiss.IndexShards):
            raise SearchIndexError("a set of loaded shards is saved shard by shard; build one index to save it whole")
        with atomic_folder(folder, "manifest.json", "an lsb-mm index") as tmp:
            write_folder(tmp, cpu, self.ids, self.metadata, self.bm25,
                         {"dim": self.dim, "metric": self.metric, "factory": self.factory, "fingerprint": self.fingerprint,
                          **({"build": self.build_info} if self.build_info else {})})
        return folder

    @classmethod
    def load(cls, folders: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], device: str = "auto") -> "Index":
        """Load one index folder, or several shards searched together as one index."""
        import faiss

        if isinstance(folders, (str, os.PathLike)):
            parts = [read_folder(os.fspath(folders))]
        else:
            parts = [read_folder(os.fspath(f)) for f in folders]
            if not parts:
                raise SearchIndexError("Index.load got an empty list of folders")
        first = parts[0][0]
        for man, _, _, _, path in parts[1:]:
            for key in ("dim", "metric", "fingerprint"):
                if man[key] != first[key]:
                    raise SearchIndexError(f"shard {path} has {key} {man[key]!r}, the first shard {first[key]!r}")
        binary = [p[4] for p in parts if isinstance(p[1], BinaryCodes)]
        if binary and len(parts) > 1:
            raise SearchIndexError(f"{binary[0]} is a binary index: FAISS cannot search binary indexes as shards of "
                                   "one index; load it on its own, or build one index over every vector")
        ids = [i for p in parts for i in p[2]]
        if len(set(ids)) != len(ids):
            raise SearchIndexError("the shards share ids; each id must live in one shard")
        metas = [p[3] for p in parts]
        metadata = None if any(m is None for m in metas) else [m for ms in metas for m in ms]
        if len(parts) == 1:
            self = cls(parts[0][1], first["dim"], first["factory"], ids, metadata, first["fingerprint"], "cpu")
            self.build_info = first["build"] if isinstance(first.get("build"), dict) else {}
            if first.get("bm25"):
                self.bm25 = read_bm25(parts[0][4], ids)
            self._to_device(device)
            return self
        placed = [place_index(p[1], device, f"{p[0]['factory']} ({p[4]})") for p in parts]
        index = faiss.IndexShards(first["dim"], True, True)  # threaded, successive ids
        for shard, _ in placed:
            index.add_shard(shard)
        factories = sorted({p[0]["factory"] for p in parts})
        where = sorted({w for _, w in placed})
        self = cls(index, first["dim"], f"Shards({len(parts)} x {' + '.join(factories)})", ids, metadata,
                   first["fingerprint"], where[0] if len(where) == 1 else " + ".join(where))
        self._shards = [shard for shard, _ in placed]  # the shard objects must outlive their wrappers
        log.info("index %s on %s", self.factory, self.device)
        return self


def _train(index, x, factory: str, seed: int) -> None:
    """Train ``index`` on a seeded sample of the rows ``x``: 64 vectors per inverted list at most
    (FAISS would take up to 256); codes without lists (SQ8, PQ ...) learn from a sample too."""
    import faiss

    try:
        nlist = index.nlist if isinstance(index, BinaryCodes) else faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = 0
    n = x.shape[0]
    limit = TRAIN_PER_LIST * nlist if nlist else TRAIN_MAX
    train = x.take(np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))) if n > limit else x[:]
    log.info("training %s on %d of %d vectors", factory, train.shape[0], n)
    try:
        index.train(train)
    except RuntimeError as exc:
        raise SearchIndexError(f"training {factory!r} on {n} vectors failed: {exc}") from exc


def _tune_search(index, x, target_recall: float, tune_queries: int, seed: int, factory: str) -> Dict[str, Any]:
    """Set ``nprobe`` / ``efSearch`` to the smallest value whose Recall@10 against exact search
    reaches ``target_recall`` on ``tune_queries`` rows of ``x`` drawn as queries; the tuning record."""
    from lsb_mm.retrieval.autoindex import exact_neighbours, tune_search

    n = x.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(tune_queries, n), replace=False))
    k = min(10, n)
    queries = x.take(rows)
    t = tune_search(index, queries, exact_neighbours(x, queries, k), target_recall, k=k)
    t["queries"] = len(rows)
    if not t["met"]:
        log.warning("index %s reaches Recall@%d %.3f at best (%s %s), short of the target %.3f: give more "
                    "memory (a longer code) or a different factory", factory, k, t["recall"], t["param"], t["value"],
                    target_recall)
    return t


def _hnsw(index):
    import faiss

    base = index
    if isinstance(base, faiss.IndexIDMap):
        base = faiss.downcast_index(base.index)
    base = faiss.downcast_index(base)
    if not hasattr(base, "hnsw"):
        raise SearchIndexError("this index has no HNSW graph")
    return base.hnsw


def _tune_new(index) -> None:
    """Sensible defaults for a fresh index: HNSW efConstruction / efSearch, IVF nprobe."""
    import faiss

    idx = index.index if isinstance(index, BinaryCodes) else faiss.downcast_index(index)
    if hasattr(idx, "hnsw"):
        idx.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        idx.hnsw.efSearch = HNSW_EF_SEARCH
    try:
        ivf = (idx if index.nlist else None) if isinstance(index, BinaryCodes) else faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.nprobe = max(1, min(ivf.nlist, ivf.nlist // 16))


_MANIFEST_FIELDS = {"dim": int, "count": int, "factory": str, "metric": str}
_METRICS = {"ip": 0}  # manifest name -> faiss.METRIC_* value (lsb-mm searches by inner product only)
