"""Embedding shards: what an encoding job writes and an index build reads, resumably.

A folder of shards holds::

    plan.json          the job: the source, its units, the model fingerprint, the dtype (written first)
    000012.npy         [n, d] float32 or float16 vectors of unit 12 (role=document, L2-normalised)
    000012.parquet     their ids and metadata (JSON text), in the same order
    000012.json        the marker, written last: count, dimension, dtype and both files' checksums

A shard is finished once its marker exists and its files match it; a writer killed at any point
leaves at most temporary files (never read, swept by the next writer), so a finished shard is never
redone and a half-written one is never read. :meth:`EmbeddingShards.rows` streams every finished
vector in plan order for :meth:`lsb_mm.Index.build` without loading them all at once.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.data.readers import Unit
from lsb_mm.errors import InputError
from lsb_mm.files import atomic_write, check_replaceable, file_sha256, read_manifest, verify_checksums

__all__ = ["EmbeddingShards", "ShardRows", "DTYPES"]

FORMAT = "lsb-mm-embeddings"
FORMAT_VERSION = 1
PLAN = "plan.json"
_OURS = re.compile(r"\d{6,}\.(npy|parquet|json)")  # a shard's three files (the plan is rewritten, not removed)
_OURS_TMP = re.compile(r"\.(\d{6,}\.(npy|parquet|json)|plan\.json)\.[^/]+\.tmp")  # atomic_write's half-written files
DTYPES = ("float32", "float16")


class EmbeddingShards:
    """An embedding shard folder (see the module docstring). Open with :meth:`open`."""

    def __init__(self, folder: str, plan: Dict[str, Any]):
        self.folder, self.plan = folder, plan
        self.units = [Unit.from_dict(u) for u in plan["units"]]
        self.fingerprint: Optional[str] = plan["fingerprint"]
        self.dtype: str = plan["dtype"]

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str, units: Optional[Sequence[Unit]] = None, fingerprint: Optional[str] = None,
             dtype: str = "float32", overwrite: bool = False) -> "EmbeddingShards":
        """Open ``folder``; with ``units``, create it for that job (or resume it: the same units,
        model and dtype, else an error naming what differs; ``overwrite`` starts over instead)."""
        path = os.path.join(folder, PLAN)
        if units is None:
            return cls(folder, _read_plan(path))
        if dtype not in DTYPES:
            raise InputError(f"embedding dtype must be one of {list(DTYPES)}, got {dtype!r}")
        check_replaceable(folder, PLAN, "an lsb-mm embedding shard")
        plan = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "dtype": dtype,
                "count": sum(len(u) for u in units), "units": [u.to_dict() for u in units]}
        if os.path.isfile(path) and not overwrite:
            old = _read_plan(path)
            for key in ("fingerprint", "dtype", "units"):
                if old[key] != plan[key]:
                    what = "the documents or --shard-size" if key == "units" else "the model" if key == "fingerprint" else key
                    raise InputError(f"{folder} holds shards of another job ({what} differ: {key} "
                                     f"{_short(old[key])} there, {_short(plan[key])} now); resume with the same "
                                     "settings, or pass --overwrite to start over")
            for name in os.listdir(folder):  # resuming: what a killed writer left half-written goes
                if _OURS_TMP.fullmatch(name):
                    _remove(os.path.join(folder, name))
            return cls(folder, old)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # starting over: the earlier job's shards go (only what lsb-mm wrote)
            if _OURS.fullmatch(name) or _OURS_TMP.fullmatch(name):
                _remove(os.path.join(folder, name))
        with atomic_write(path) as f:
            json.dump(plan, f, indent=1)
        return cls(folder, plan)

    # -- state ---------------------------------------------------------------------------------
    def _name(self, shard: int) -> str:
        return os.path.join(self.folder, f"{shard:06d}")

    def marker(self, shard: int) -> Optional[Dict[str, Any]]:
        """The marker of ``shard`` when its files are in place with the sizes it records, else None."""
        base = self._name(shard)
        try:
            with open(base + ".json", encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or m.get("unit") != self.units[shard].to_dict():
            return None
        for ext in ("npy", "parquet"):
            try:
                if os.path.getsize(f"{base}.{ext}") != m.get("bytes", {}).get(ext):
                    return None
            except OSError:
                return None
        return m

    def kind(self) -> str:
        """``"text"`` or ``"image"``: what the (finished) shards hold."""
        kinds = {(self.marker(u.shard) or {}).get("kind") for u in self.units} - {None}
        if len(kinds) != 1:
            raise InputError(f"{self.folder}: shards of kinds {sorted(kinds)}; expected all text or all image")
        return kinds.pop()

    def finished(self) -> List[int]:
        return [u.shard for u in self.units if self.marker(u.shard) is not None]

    def todo(self) -> List[Unit]:
        """The units whose shard is not finished, in order."""
        return [u for u in self.units if self.marker(u.shard) is None]

    # -- writing -------------------------------------------------------------------------------
    def write(self, unit: Unit, embeddings: np.ndarray, docs) -> None:
        """Write the shard of ``unit``: its vectors and the ids and metadata of ``docs``
        (:class:`~lsb_mm.data.documents.Documents`), each file atomically, the marker last."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids, metadata = docs.ids, docs.metadata
        emb = np.ascontiguousarray(embeddings, dtype=self.dtype)
        if emb.ndim != 2 or emb.shape[0] != len(unit) or len(ids) != len(unit) or len(metadata) != len(unit):
            raise InputError(f"shard {unit.shard}: {emb.shape} vectors, {len(ids)} ids, {len(metadata)} metadata rows "
                             f"for a unit of {len(unit)} documents")
        base = self._name(unit.shard)
        with atomic_write(base + ".npy", "wb") as f:
            np.save(f, emb, allow_pickle=False)
        table = pa.table({"id": pa.array([str(i) for i in ids], pa.string()),
                          "metadata": pa.array([json.dumps(m, ensure_ascii=False) for m in metadata], pa.string())})
        with atomic_write(base + ".parquet", "wb") as f:
            pq.write_table(table, f)
        marker = {"unit": unit.to_dict(), "kind": docs.kind, "count": int(emb.shape[0]), "dim": int(emb.shape[1]), "dtype": self.dtype,
                  "bytes": {ext: os.path.getsize(f"{base}.{ext}") for ext in ("npy", "parquet")},
                  "sha256": {ext: file_sha256(f"{base}.{ext}") for ext in ("npy", "parquet")}}
        with atomic_write(base + ".json") as f:
            json.dump(marker, f)

    # -- reading -------------------------------------------------------------------------------
    def _checked(self, shard: int) -> Dict[str, Any]:
        m = self.marker(shard)
        if m is None:
            raise InputError(f"{self._name(shard)}: shard {shard} is not finished (run the encoding job again to "
                             "complete it)")
        base = self._name(shard)
        name = os.path.basename(base)
        verify_checksums(os.path.dirname(base), {f"{name}.{ext}": m["sha256"][ext] for ext in ("npy", "parquet")},
                         [f"{name}.npy", f"{name}.parquet"], base + ".json",
                         hint="; remove the shard's three files and run the job again")
        return m

    def read_table(self, shard: int) -> Tuple[List[str], List[Dict[str, Any]]]:
        import pyarrow.parquet as pq

        table = pq.read_table(self._name(shard) + ".parquet")
        return table.column("id").to_pylist(), [json.loads(s) for s in table.column("metadata").to_pylist()]

    def rows(self) -> "ShardRows":
        """Every shard's vectors (all must be finished and match their checksums), memory-mapped."""
        todo = self.todo()
        if todo:
            raise InputError(f"{self.folder}: {len(todo)} of {len(self.units)} shards are not finished (first: "
                             f"{todo[0].shard}); run the encoding job again to complete them")
        arrays = []
        for u in self.units:
            m = self._checked(u.shard)
            path = self._name(u.shard) + ".npy"
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if a.shape != (m["count"], m["dim"]) or str(a.dtype) != m["dtype"]:
                raise InputError(f"{path}: shape {a.shape} {a.dtype}, its marker says "
                                 f"({m['count']}, {m['dim']}) {m['dtype']}")
            arrays.append(_Lazy(path, a.shape))  # opened when read: a memory map holds a file descriptor
            del a
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1:
            raise InputError(f"{self.folder}: shards of different dimensions {sorted(dims)}")
        return ShardRows(arrays)

    def ids_and_metadata(self) -> Tuple[List[str], List[Dict[str, Any]]]:
        ids: List[str] = []
        metadata: List[Dict[str, Any]] = []
        for u in self.units:
            i, m = self.read_table(u.shard)
            ids.extend(i)
            metadata.extend(m)
        return ids, metadata


class _Lazy:
    """A shard's ``.npy`` file, memory-mapped only while it is read (so a build over thousands of
    shards never holds thousands of open files)."""

    def __init__(self, path: str, shape: Tuple[int, int]):
        self.path, self.shape = path, shape

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __getitem__(self, index) -> np.ndarray:
        return np.array(self.open()[index])


class ShardRows:
    """Rows of several ``[n_i, d]`` arrays (in memory, or shards memory-mapped as they are read)
    seen as one ``[N, d]`` float32 matrix: slices and row picks read only what they touch; float16
    rows are re-normalised."""

    def __init__(self, arrays: Sequence[Any]):
        self.arrays = list(arrays)
        self.starts = np.cumsum([0] + [a.shape[0] for a in self.arrays])
        self.shape = (int(self.starts[-1]), int(self.arrays[0].shape[1]) if self.arrays else 0)

    def __len__(self) -> int:
        return self.shape[0]

    @staticmethod
    def _f32(a: np.ndarray) -> np.ndarray:
        if a.dtype == np.float32:
            return np.ascontiguousarray(a)
        x = np.asarray(a, dtype=np.float32)
        return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    def __getitem__(self, s: slice) -> np.ndarray:
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("ShardRows supports contiguous slices; use take() for row numbers")
        start, stop, _ = s.indices(len(self))
        parts = []
        for k, a in enumerate(self.arrays):
            lo, hi = max(start, self.starts[k]), min(stop, self.starts[k + 1])
            if lo < hi:
                parts.append(self._f32(a[lo - self.starts[k]:hi - self.starts[k]]))
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), np.float32)

    def take(self, rows: Sequence[int]) -> np.ndarray:
        """Rows by number (any order), as float32."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            out[sel] = self._f32(self.arrays[k][rows[sel] - self.starts[k]])
        return out

    def chunks(self, size: int = 65536) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` in order, at most ``size`` rows each, never across shards."""
        for k, a in enumerate(self.arrays):
            opened = a.open() if isinstance(a, _Lazy) else a  # one map per shard while its blocks are read
            for s in range(0, a.shape[0], size):
                yield int(self.starts[k]) + s, self._f32(opened[s:s + size])
            del opened


def _read_plan(path: str) -> Dict[str, Any]:
    plan = read_manifest(path, FORMAT, (FORMAT_VERSION, FORMAT_VERSION), InputError,
                         f"{os.path.dirname(path) or '.'} is not an lsb-mm embedding shard folder ({PLAN} is missing)")
    if plan.get("dtype") not in DTYPES or not isinstance(plan.get("units"), list) or not plan["units"]:
        raise InputError(f"{path}: field 'dtype' or 'units' is missing or malformed")
    try:
        for u in plan["units"]:
            Unit.from_dict(u)
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise InputError(f"{path}: a unit is malformed ({exc})") from None
    plan.setdefault("fingerprint", None)
    return plan


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} entries)" if isinstance(value, list) else text[:80]


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
