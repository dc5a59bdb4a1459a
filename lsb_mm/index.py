"""FAISS searcher: build from embeddings with an index-factory string, search in batches, persist.

* inner product on L2-normalised vectors (cosine), string ids of any kind, optional metadata;
* ``device="auto"`` puts the index on every GPU FAISS sees (sharded), else the CPU;
* ``save(folder)`` writes ``manifest.json`` (dimension, metric, factory, count, model fingerprint,
  library versions, checksum) + ``index.faiss`` + ``ids.jsonl`` (+ ``metadata.jsonl``),
  atomically; ``Index.load(folder)`` validates all of it; ``Index.load([f1, f2, ...])`` searches
  several shards together (``faiss.IndexShards``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .errors import InputError
from .serialization import atomic_folder

__all__ = ["Index", "DEFAULT_ANN", "SearchIndexError"]

log = logging.getLogger(__name__)
FORMAT = "lsb-mm-index"
FORMAT_VERSION = 1
DEFAULT_ANN = "HNSW32"
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256


class SearchIndexError(InputError):
    """A query or an index folder that does not fit (dimension, model, files)."""


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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class Index:
    """A FAISS index with string ids, metadata and a manifest. Build with :meth:`build`."""

    def __init__(self, index, dim: int, factory: str, ids: List[str], metadata: Optional[List[Dict[str, Any]]] = None,
                 fingerprint: Optional[str] = None, device: str = "cpu"):
        self._index, self.dim, self.factory = index, int(dim), factory
        self.ids, self.metadata, self.fingerprint, self.device = list(ids), metadata, fingerprint, device
        self.metric = "ip"
        self._id_set = set(self.ids)
        self._lookup: Optional[np.ndarray] = None  # ids as an object array (+ None for missing), built once

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings, ids: Optional[Sequence[Any]] = None, metadata: Optional[Sequence[Dict[str, Any]]] = None,
              factory: str = "Flat", device: str = "auto", fingerprint: Optional[str] = None,
              normalize: bool = False) -> "Index":
        """Index ``embeddings [N, d]`` (L2-normalised; ``normalize=True`` does it) with a FAISS
        index-factory string (``Flat``, ``HNSW32``, ``IVF1024,Flat``, ``IVF256,PQ16`` ...),
        training the index first when the factory needs it."""
        import faiss

        x = _as_matrix(embeddings, "embeddings", check_norm=not normalize)
        if normalize:
            x = _normalize(x)
        d = x.shape[1]
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise SearchIndexError(f"FAISS cannot build index factory {factory!r} for dimension {d}: {exc}") from exc
        _tune_new(index)
        self = cls(index, d, factory, [], None, fingerprint, "cpu")
        if not index.is_trained:
            log.info("training %s on %d vectors", factory, x.shape[0])
            try:
                index.train(x)
            except RuntimeError as exc:
                raise SearchIndexError(f"training {factory!r} on {x.shape[0]} vectors failed: {exc}") from exc
        self._to_device(device)
        self.add(x, ids, metadata)
        return self

    def _to_device(self, device: str) -> None:
        import faiss

        if device not in ("auto", "cpu", "gpu"):
            raise SearchIndexError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
        ngpu = _gpu_count()
        if device == "gpu" and ngpu == 0:
            raise SearchIndexError("device='gpu' but FAISS sees no GPU (faiss.get_num_gpus() == 0)")
        if ngpu and device in ("auto", "gpu"):
            co = faiss.GpuMultipleClonerOptions()
            co.shard = True
            self._index = faiss.index_cpu_to_all_gpus(self._index, co=co)
            self.device = f"gpu x{ngpu}"
        else:
            self.device = "cpu"
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
        if (metadata is None) != (self.metadata is None) and n0:
            raise SearchIndexError("give metadata for every batch added, or for none")
        self._index.add(x)
        self._lookup = None
        self.ids.extend(new_ids)
        self._id_set.update(new_ids)
        if metadata is not None:
            self.metadata = (self.metadata or []) + [dict(m) for m in metadata]

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, fingerprint: Optional[str] = None, batch_size: int = 4096,
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query: ``(scores [Q, k] float32, ids [Q, k] object)``.

        Slots beyond the index size hold score ``-inf`` and id ``None``. ``fingerprint`` (the
        query model's :meth:`~lsb_mm.LSBModel.fingerprint`) is checked against the index's.
        """
        if fingerprint is not None and self.fingerprint is not None and fingerprint != self.fingerprint:
            raise SearchIndexError(f"the queries come from model {fingerprint}, the index was built from model "
                              f"{self.fingerprint}; encode with the same model (or rebuild the index)")
        if not isinstance(k, int) or k < 1:
            raise SearchIndexError(f"k must be a positive integer, got {k!r}")
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

    def set_search_params(self, **params: Any) -> None:
        """FAISS search parameters, e.g. ``nprobe=32`` (IVF) or ``efSearch=256`` (HNSW)."""
        import faiss

        ps = faiss.GpuParameterSpace() if self.device.startswith("gpu") else faiss.ParameterSpace()
        for name, value in params.items():
            try:
                ps.set_index_parameter(self._index, name, value)
            except RuntimeError as exc:
                raise SearchIndexError(f"index {self.factory!r} has no search parameter {name!r}: {exc}") from exc

    @property
    def nprobe(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self._cpu_view()).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.set_search_params(nprobe=int(value))

    @property
    def ef_search(self) -> int:
        return int(_hnsw(self._cpu_view()).efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.set_search_params(efSearch=int(value))

    def _cpu_view(self):
        import faiss

        idx = self._index
        if isinstance(idx, faiss.IndexShards) or self.device.startswith("gpu"):
            raise SearchIndexError("read the parameter on a single CPU index; set it with set_search_params")
        return idx

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
        with atomic_folder(folder) as tmp:
            faiss.write_index(cpu, os.path.join(tmp, "index.faiss"))
            with open(os.path.join(tmp, "ids.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(i, ensure_ascii=False) + "\n" for i in self.ids)
            if self.metadata is not None:
                with open(os.path.join(tmp, "metadata.jsonl"), "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(m, ensure_ascii=False) + "\n" for m in self.metadata)
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                        "factory": self.factory, "count": len(self.ids), "fingerprint": self.fingerprint,
                        "metadata": self.metadata is not None, "index_sha256": _sha256(os.path.join(tmp, "index.faiss")),
                        "versions": {"lsb_mm": __version__, "faiss": faiss.__version__, "numpy": np.__version__}}
            with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2)
        return folder

    @classmethod
    def load(cls, folders: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], device: str = "auto") -> "Index":
        """Load one index folder, or several shards searched together as one index."""
        import faiss

        if isinstance(folders, (str, os.PathLike)):
            parts = [_read_folder(os.fspath(folders))]
        else:
            parts = [_read_folder(os.fspath(f)) for f in folders]
            if not parts:
                raise SearchIndexError("Index.load got an empty list of folders")
        first = parts[0][0]
        for man, _, _, _, path in parts[1:]:
            for key in ("dim", "metric", "fingerprint"):
                if man[key] != first[key]:
                    raise SearchIndexError(f"shard {path} has {key} {man[key]!r}, the first shard {first[key]!r}")
        ids = [i for p in parts for i in p[2]]
        if len(set(ids)) != len(ids):
            raise SearchIndexError("the shards share ids; each id must live in one shard")
        metas = [p[3] for p in parts]
        metadata = None if any(m is None for m in metas) else [m for ms in metas for m in ms]
        if len(parts) == 1:
            index = parts[0][1]
        else:
            index = faiss.IndexShards(first["dim"], True, True)  # threaded, successive ids
            for p in parts:
                index.add_shard(p[1])
        factory = first["factory"] if len(parts) == 1 else f"Shards({len(parts)} x {first['factory']})"
        self = cls(index, first["dim"], factory, ids, metadata, first["fingerprint"], "cpu")
        self._shards = [p[1] for p in parts]  # the shard objects must outlive their wrappers
        if len(parts) == 1:
            self._to_device(device)
        return self


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

    idx = faiss.downcast_index(index)
    if hasattr(idx, "hnsw"):
        idx.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        idx.hnsw.efSearch = HNSW_EF_SEARCH
    try:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = max(1, min(ivf.nlist, ivf.nlist // 16))
    except RuntimeError:
        pass


def _read_folder(folder: str):
    import faiss

    path = os.path.join(folder, "manifest.json")
    if not os.path.isdir(folder):
        raise SearchIndexError(f"index folder {folder} does not exist")
    if not os.path.isfile(path):
        raise SearchIndexError(f"{folder} is not a complete lsb-mm index: manifest.json is missing")
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except json.JSONDecodeError as exc:
        raise SearchIndexError(f"{path} is not valid JSON: {exc}") from exc
    if man.get("format") != FORMAT or not isinstance(man.get("format_version"), int) or man["format_version"] > FORMAT_VERSION:
        raise SearchIndexError(f"{path}: format {man.get('format')!r} version {man.get('format_version')!r} is not "
                          f"supported by lsb-mm {__version__}")
    ipath = os.path.join(folder, "index.faiss")
    if not os.path.isfile(ipath):
        raise SearchIndexError(f"{folder}: index.faiss is missing")
    if _sha256(ipath) != man.get("index_sha256"):
        raise SearchIndexError(f"{ipath}: checksum does not match manifest.json (file changed or corrupt)")
    index = faiss.read_index(ipath)
    ids = _read_jsonl(os.path.join(folder, "ids.jsonl"))
    metadata = _read_jsonl(os.path.join(folder, "metadata.jsonl")) if man.get("metadata") else None
    if index.d != man["dim"] or index.ntotal != man["count"] or len(ids) != man["count"] or \
            (metadata is not None and len(metadata) != man["count"]):
        raise SearchIndexError(f"{folder}: the files disagree with manifest.json (dim {index.d} vs {man['dim']}, "
                          f"vectors {index.ntotal}, ids {len(ids)}, expected {man['count']})")
    return man, index, ids, metadata, folder


def _read_jsonl(path: str) -> List[Any]:
    if not os.path.isfile(path):
        raise SearchIndexError(f"{path} is missing")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

