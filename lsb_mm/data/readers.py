"""Documents in work units that workers read on their own: image folders, JSONL / BEIR corpora,
CSV tables, Parquet files and tar shards in the WebDataset layout.

:func:`plan_units` cuts a source into :class:`Unit` s (JSON-able: they travel to Ray workers and
into an embedding folder's plan) in a fixed order; :func:`read_unit` reads one as
:class:`lsb_mm.data.documents.Documents`. Parquet and tar sources are planned from file metadata alone
(row-group sizes; one unit per tar), so a corpus larger than memory is never listed whole; folders,
JSONL and CSV are listed once per process and sliced.

Parquet: one row per document with an id column (``_id`` or ``id``) and ``text``, or ``image``
(encoded bytes, or a path relative to ``image_root`` / the file's folder) with an optional
``caption``. WebDataset tar: members ``<key>.<ext>`` grouped by key (the name up to its first
dot), an image (``jpg``, ``png`` ...) with optional ``txt`` caption and ``json`` metadata, or a
``txt`` alone for a text document; the id is ``<tar name>/<key>``.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import tarfile
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lsb_mm.errors import InputError
from lsb_mm.data.images import IMAGE_EXTENSIONS, ImageBlob

__all__ = ["SOURCES", "Source", "Unit", "ImageBlob", "plan_units", "read_unit", "read_units", "read_source", "clear_cache"]

SOURCES = ("images", "corpus", "csv", "parquet", "tar")
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)
IMAGE_EXTS = tuple(e[1:] for e in IMAGE_EXTENSIONS)  # tar member extensions that are images


@dataclasses.dataclass(frozen=True)
class Source:
    """Where documents come from: ``kind`` one of :data:`SOURCES` and its path (a folder, a file,
    or for ``parquet`` / ``tar`` a folder or glob of files), with the CSV columns and image root."""

    kind: str
    path: str
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    image_root: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise InputError(f"source kind {self.kind!r}: expected one of {list(SOURCES)}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Unit:
    """Records ``[start, stop)`` of one file of a source (a whole tar: ``stop`` is its sample
    count), written as embedding shard number ``shard``."""

    shard: int
    source: Source
    path: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> Dict[str, Any]:
        return {"shard": self.shard, "source": self.source.to_dict(), "path": self.path, "start": self.start,
                "stop": self.stop}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Unit":
        return cls(int(d["shard"]), Source(**d["source"]), str(d["path"]), int(d["start"]), int(d["stop"]))


def source_files(source: Source) -> List[str]:
    """The files of a Parquet / tar source in sorted order: the file itself, a folder's files with
    that extension, or a glob's matches."""
    ext = ".parquet" if source.kind == "parquet" else ".tar"
    p = source.path
    if os.path.isdir(p):
        files = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(ext) and not f.startswith("."))
    elif any(c in p for c in "*?["):
        files = sorted(glob.glob(p))
    else:
        files = [p] if os.path.isfile(p) else []
    if not files:
        raise InputError(f"--{source.kind} {p}: no {ext} files found")
    return files


def plan_units(source: Source, shard_size: int) -> List[Unit]:
    """The units of ``source``: runs of ``shard_size`` documents (Parquet: whole row groups up to
    about that many rows, and a larger row group in slices of ``shard_size``; tar: one unit per tar
    file), numbered in order."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise InputError(f"shard size must be a positive integer, got {shard_size!r}")
    spans: List[Tuple[str, int, int]] = []
    clear_cache()  # a new job lists its source afresh
    if source.kind == "parquet":
        for path in source_files(source):
            meta = _parquet_file(path).metadata
            start = row = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if row > start and row - start + n > shard_size:  # whole row groups, about shard_size rows
                    spans.append((path, start, row))
                    start = row
                if n > shard_size:  # a row group larger than a shard is cut: each unit reads it, keeps its rows
                    spans += [(path, a, min(a + shard_size, row + n)) for a in range(row, row + n, shard_size)]
                    start = row + n
                row += n
            if row > start:
                spans.append((path, start, row))
    elif source.kind == "tar":
        files = source_files(source)
        names = [os.path.splitext(os.path.basename(p))[0] for p in files]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:  # ids are <tar name>/<key>: two tars of one name would give the same ids
            same = [p for p, n in zip(files, names) if n == dup]
            raise InputError(f"--tar {source.path}: {same[0]} and {same[1]} share the name {dup!r}, and a document's "
                             "id is <tar name>/<key>; give tars of distinct names (or index them separately)")
        spans = [(path, 0, len(_tar_samples(path))) for path in files]
        spans = [s for s in spans if s[2]]
    else:
        n = len(_listing(source).ids)
        spans = [(source.path, s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    if not spans:
        raise InputError(f"--{source.kind} {source.path} holds no documents")
    return [Unit(i, source, path, a, b) for i, (path, a, b) in enumerate(spans)]


def _row_of(meta, group: int) -> int:
    return sum(meta.row_group(j).num_rows for j in range(group))


def _group_of(meta, row: int) -> int:
    """The fewest leading row groups that hold ``row`` rows."""
    g, seen = 0, 0
    while seen < row:
        seen += meta.row_group(g).num_rows
        g += 1
    return g


def read_unit(unit: Unit):
    """The documents of ``unit`` (:class:`lsb_mm.data.documents.Documents`; images of tar / Parquet bytes
    as :class:`ImageBlob`)."""
    src = unit.source
    if src.kind == "parquet":
        return _read_parquet(src, unit.path, unit.start, unit.stop)
    if src.kind == "tar":
        docs = _read_tar(unit.path)
        if len(docs.ids) != len(unit):
            raise InputError(f"{unit.path}: {len(docs.ids)} samples, the plan counted {len(unit)} (the tar changed)")
        return docs
    docs = _listing(src)
    return docs.subset(list(range(unit.start, unit.stop)))


def read_units(units: Sequence[Unit]):
    """The documents of ``units`` in order, in one :class:`~lsb_mm.data.documents.Documents`."""
    from lsb_mm.data.documents import Documents

    parts = [read_unit(u) for u in units]
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        raise InputError(f"--{units[0].source.kind} {units[0].source.path} mixes text and image documents")
    return Documents(parts[0].kind, [i for p in parts for i in p.ids], [x for p in parts for x in p.items],
                     [m for p in parts for m in p.metadata])


def read_source(source: Source):
    """Every document of ``source``, in the order of its units."""
    return read_units(plan_units(source, 1 << 40))


def clear_cache() -> None:
    """Forget the listings and Parquet handles read so far (a job's sources may change after it)."""
    _listing.cache_clear()
    _parquet_file.cache_clear()


@functools.lru_cache(maxsize=2)
def _listing(source: Source):
    """A folder, JSONL or CSV source listed once per job (its units are slices of it)."""
    from lsb_mm.data.documents import read_documents

    kw = {"images": None, "corpus": None, "csv_path": None}
    kw["csv_path" if source.kind == "csv" else source.kind] = source.path
    return read_documents(**kw, csv_img_key=source.csv_img_key, csv_caption_key=source.csv_caption_key,
                          image_root=source.image_root)


@functools.lru_cache(maxsize=8)
def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_parquet(source: Source, path: str, start: int, stop: int):
    from lsb_mm.data.documents import Documents

    pf = _parquet_file(path)
    cols = set(pf.schema_arrow.names)
    id_col = "_id" if "_id" in cols else "id" if "id" in cols else None
    kind = "text" if "text" in cols else "image" if "image" in cols else None
    if id_col is None or kind is None:
        raise InputError(f"{path}: expected an '_id' (or 'id') column and a 'text' or 'image' column; it has {sorted(cols)}")
    meta = pf.metadata
    if stop > meta.num_rows:
        raise InputError(f"{path}: has {meta.num_rows} rows, the job planned {stop}; the file changed since (rerun "
                         "with --overwrite to plan it again)")
    first, last = _group_of(meta, start + 1) - 1, _group_of(meta, stop)  # the groups holding rows start .. stop - 1
    try:
        table = pf.read_row_groups(list(range(first, last)),
                                   columns=[c for c in (id_col, kind, "caption", "title") if c in cols])
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged pages
        raise InputError(f"{path}: rows {start + 1}..{stop} cannot be read ({type(exc).__name__}: {exc})") from None
    offset = start - _row_of(meta, first)
    rows = table.slice(offset, stop - start).to_pylist()
    root = source.image_root or os.path.dirname(os.path.abspath(path))
    ids, items, metadata = [], [], []
    for n, row in enumerate(rows, start + 1):
        where = f"{path} row {n}"
        if row[id_col] is None or row[kind] is None:
            raise InputError(f"{where}: empty {id_col!r} or {kind!r}")
        ids.append(str(row[id_col]))
        if kind == "text":
            if not isinstance(row["text"], str):
                raise InputError(f"{where}: 'text' must be a string, got {type(row['text']).__name__}")
            text = f"{row['title']} {row['text']}" if row.get("title") else row["text"]
            items.append(text)
            metadata.append({"text": text[:300]})
        else:
            value = row["image"]
            if isinstance(value, dict) and "bytes" in value:  # Hugging Face datasets' image struct
                value = value["bytes"]
            if isinstance(value, (bytes, bytearray)):
                items.append(ImageBlob(bytes(value), f"{where} ({ids[-1]})"))
                m: Dict[str, Any] = {"source": f"{os.path.basename(path)}#{n}"}
            elif isinstance(value, str):
                items.append(os.path.join(root, value))
                m = {"path": items[-1]}
            else:
                raise InputError(f"{where}: 'image' must be encoded bytes or a path, got {type(value).__name__}")
            if row.get("caption"):
                m["caption"] = str(row["caption"])
            metadata.append(m)
    return Documents(kind, ids, items, metadata)


def _tar_samples(path: str) -> Dict[str, Dict[str, tarfile.TarInfo]]:
    """``{key: {extension: member}}`` of a WebDataset tar, in the order keys first appear."""
    try:
        tf = tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{path}: not a readable tar file ({exc})") from None
    samples: Dict[str, Dict[str, tarfile.TarInfo]] = {}
    with tf:
        try:
            for member in tf:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower()
                samples.setdefault(key, {})[ext] = member
        except _TAR_ERRORS as exc:  # a truncated or corrupt archive fails while it is walked
            raise InputError(f"{path}: damaged tar file ({type(exc).__name__}: {exc})") from None
    return samples


def _read_tar(path: str):
    from lsb_mm.data.documents import Documents

    samples = _tar_samples(path)
    name = os.path.splitext(os.path.basename(path))[0]
    ids, items, metadata, kinds = [], [], [], set()
    with tarfile.open(path) as tf:
        def read(member) -> bytes:
            try:
                f = tf.extractfile(member)
                assert f is not None  # members are regular files
                return f.read()
            except _TAR_ERRORS as exc:
                raise InputError(f"{path}:{member.name}: damaged tar member ({type(exc).__name__}: {exc})") from None

        for key, parts in samples.items():
            where = f"{path}:{key}"
            image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
            m: Dict[str, Any] = {"source": f"{os.path.basename(path)}:{key}"}
            if "json" in parts:
                try:
                    extra = json.loads(read(parts["json"]).decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InputError(f"{where}.json: not a JSON object ({exc})") from None
                if not isinstance(extra, dict):
                    raise InputError(f"{where}.json: expected a JSON object, got {type(extra).__name__}")
                m.update({k: v for k, v in extra.items() if k not in ("source", "path")})
            text = None
            if "txt" in parts:
                try:
                    text = read(parts["txt"]).decode("utf-8-sig").strip()
                except UnicodeDecodeError:
                    raise InputError(f"{where}.txt: not UTF-8 text") from None
            if image_ext is not None:
                kinds.add("image")
                items.append(ImageBlob(read(parts[image_ext]), f"{where}.{image_ext}"))
                if text:
                    m["caption"] = text
            elif text:
                kinds.add("text")
                items.append(text)
                m["text"] = text[:300]
            else:
                raise InputError(f"{where}: a sample needs an image ({', '.join(IMAGE_EXTS)}) or a txt; it has "
                                 f"{sorted(parts)}")
            ids.append(f"{name}/{key}")
            metadata.append(m)
    if len(kinds) > 1:
        raise InputError(f"{path} mixes image samples and text-only samples")
    if not ids:
        raise InputError(f"{path} holds no samples")
    return Documents(kinds.pop(), ids, items, metadata)
