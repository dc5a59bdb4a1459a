"""The index folder format (``lsb-mm-index``), written by ``Index.save`` and read by ``Index.load``.

``manifest.json`` (format, version, dimension, metric, factory, count, model fingerprint, library
versions, the SHA-256 of every file), ``index.faiss``, ``ids.jsonl`` (+ ``metadata.jsonl``; a
binary index's ``codes.npy`` / ``binary_params.npy``; a BM25 side in ``bm25/``). Reading checks
every field and checksum before FAISS sees a byte.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from lsb_mm._version import __version__
from lsb_mm.errors import InputError, SearchIndexError
from lsb_mm.files import iter_jsonl, read_manifest, verify_checksums, write_jsonl, write_manifest
from lsb_mm.retrieval.binary import BinaryCodes, is_binary_factory

__all__ = ["FORMAT", "FORMAT_VERSION", "write_folder", "read_folder", "read_bm25"]

log = logging.getLogger(__name__)
FORMAT = "lsb-mm-index"
FORMAT_VERSION = 2  # 2: every file checksummed and the model fingerprint recorded (null: none), both required
BM25_MANIFEST = "bm25/manifest.json"  # the optional lexical side's manifest (its checksum is in the index's)
BINARY_CODES = "codes.npy"  # a binary index's packed bits, kept for rescoring (lsb_mm.retrieval.binary)
BINARY_PARAMS = "binary_params.npy"  # its per-dimension thresholds and the mean values below / above them
_MANIFEST_FIELDS = {"dim": int, "count": int, "factory": str, "metric": str}
_METRICS = {"ip": 0}  # manifest name -> faiss.METRIC_* value (lsb-mm searches by inner product only)


def write_folder(tmp: str, cpu, ids: List[str], metadata: Optional[List[Dict[str, Any]]], bm25,
                 fields: Dict[str, Any]) -> None:
    """Write the files of one index into ``tmp`` (an :class:`~lsb_mm.files.atomic_folder`), the
    manifest last; ``fields``: dim, metric, factory, fingerprint (and build)."""
    import faiss

    binary = isinstance(cpu, BinaryCodes)
    if binary:
        cpu.write(os.path.join(tmp, "index.faiss"), os.path.join(tmp, BINARY_CODES), os.path.join(tmp, BINARY_PARAMS))
    else:
        faiss.write_index(cpu, os.path.join(tmp, "index.faiss"))
    write_jsonl(os.path.join(tmp, "ids.jsonl"), ids)
    if metadata is not None:
        write_jsonl(os.path.join(tmp, "metadata.jsonl"), metadata)
    files = ["index.faiss", "ids.jsonl"] + (["metadata.jsonl"] if metadata is not None else []) + \
        ([BINARY_CODES, BINARY_PARAMS] if binary else [])
    if bm25 is not None:  # verified on load by its own manifest, whose checksum is kept here
        bm25.save(os.path.join(tmp, "bm25"))
        files.append(BM25_MANIFEST)
    write_manifest(os.path.join(tmp, "manifest.json"), FORMAT, FORMAT_VERSION,
                   {**fields, "count": len(ids), "metadata": metadata is not None, "bm25": bm25 is not None,
                    "versions": {"lsb_mm": __version__, "faiss": faiss.__version__, "numpy": np.__version__}}, files)


def read_bm25(folder: str, ids: List[str]):
    from lsb_mm.retrieval.bm25 import BM25

    try:
        bm25 = BM25.load(os.path.join(folder, "bm25"))
    except InputError as exc:
        raise SearchIndexError(f"the BM25 side of index {folder}: {exc}") from None
    if bm25.ids != ids:
        raise SearchIndexError(f"{folder}/bm25: its ids differ from the index's ids.jsonl")
    return bm25


def read_folder(folder: str):
    import faiss

    path = os.path.join(folder, "manifest.json")
    if not os.path.isdir(folder):
        raise SearchIndexError(f"index folder {folder} does not exist")
    man = read_manifest(path, FORMAT, (1, FORMAT_VERSION), SearchIndexError,
                        f"{folder} is not a complete lsb-mm index: manifest.json is missing")
    for key, typ in _MANIFEST_FIELDS.items():
        if not isinstance(man.get(key), typ) or isinstance(man.get(key), bool):
            raise SearchIndexError(f"{path}: field {key!r} is {man.get(key)!r}; expected a {typ.__name__}")
    if man["metric"] not in _METRICS:
        raise SearchIndexError(f"{path}: metric {man['metric']!r} unknown; expected one of {sorted(_METRICS)}")
    binary = is_binary_factory(man["factory"])
    names = ["index.faiss", "ids.jsonl"] + (["metadata.jsonl"] if man.get("metadata") else []) + \
        ([BM25_MANIFEST] if man.get("bm25") else []) + ([BINARY_CODES, BINARY_PARAMS] if binary else [])
    if man["format_version"] >= 2:
        if "fingerprint" not in man or not isinstance(man["fingerprint"], (str, type(None))):
            raise SearchIndexError(f"{path}: field 'fingerprint' must be the model's fingerprint (or null for an index "
                                   f"built without one), got {man.get('fingerprint', '<missing>')!r}")
        if "sha256" not in man:
            raise SearchIndexError(f"{path}: field 'sha256' (the checksum of every file) is missing")
        verify_checksums(folder, man["sha256"], names, path, SearchIndexError)
    else:  # written before lsb-mm checksummed every file: the index only
        log.warning("%s: written by an older lsb-mm that checksummed index.faiss only; ids and metadata are not "
                    "verified (rebuild the index to verify them)", folder)
        verify_checksums(folder, {"index.faiss": man.get("index_sha256")}, ["index.faiss"], path, SearchIndexError)
    man.setdefault("fingerprint", None)
    ipath = os.path.join(folder, "index.faiss")
    try:
        if binary:
            index = BinaryCodes.read(ipath, os.path.join(folder, BINARY_CODES), os.path.join(folder, BINARY_PARAMS),
                                     man["dim"], man["factory"])
        else:
            index = faiss.read_index(ipath)
    except (RuntimeError, ValueError, OSError, InputError) as exc:
        raise SearchIndexError(f"{ipath}: FAISS cannot read it: {exc}") from exc
    if index.metric_type != _METRICS[man["metric"]]:
        raise SearchIndexError(f"{ipath}: FAISS metric {index.metric_type} differs from manifest.json's {man['metric']!r}")
    ids = _read_jsonl(os.path.join(folder, "ids.jsonl"))
    if not all(isinstance(i, str) for i in ids):
        bad = next(n for n, i in enumerate(ids, 1) if not isinstance(i, str))
        raise SearchIndexError(f"{folder}/ids.jsonl:{bad}: expected a JSON string id")
    metadata = _read_jsonl(os.path.join(folder, "metadata.jsonl")) if man.get("metadata") else None
    if metadata is not None and not all(isinstance(m, dict) for m in metadata):
        bad = next(n for n, m in enumerate(metadata, 1) if not isinstance(m, dict))
        raise SearchIndexError(f"{folder}/metadata.jsonl:{bad}: expected a JSON object")
    if index.d != man["dim"] or index.ntotal != man["count"] or len(ids) != man["count"] or \
            (metadata is not None and len(metadata) != man["count"]):
        raise SearchIndexError(f"{folder}: the files disagree with manifest.json (dim {index.d} vs {man['dim']}, "
                               f"vectors {index.ntotal}, ids {len(ids)}, expected {man['count']})")
    return man, index, ids, metadata, folder


def _read_jsonl(path: str) -> List[Any]:
    if not os.path.isfile(path):
        raise SearchIndexError(f"{path} is missing")
    try:
        return [value for _, value in iter_jsonl(path)]
    except InputError as exc:
        raise SearchIndexError(str(exc)) from None
