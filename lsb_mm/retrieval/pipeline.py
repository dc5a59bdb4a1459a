"""``build_index``: the whole ``lsb-mm index`` pipeline as one Python call.

Documents come from a folder of images, a JSONL corpus or BEIR folder, a CSV / TSV of images, Parquet
files or WebDataset tars; they are encoded with ``role="document"`` (in this process, or into
resumable embedding shards on the ``local`` or ``ray`` engine), indexed with FAISS (a factory
string or ``auto``), optionally with BM25 beside, and saved when ``output`` is given.

    index = lsb_mm.build_index(model, "photos/", output="photos.index")
    scores, ids = index.search(model.encode_query(["a red bicycle"]), k=10)
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from lsb_mm.errors import InputError, positive_int
from lsb_mm.files import check_replaceable, write_text

__all__ = ["build_index", "source_of", "ENGINES"]

ENGINES = ("memory", "local", "ray")
_EXT_KIND = {".jsonl": "corpus", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".tar": "tar"}


def source_of(source: Any, kind: Optional[str] = None, *, image_root: Optional[str] = None,
              csv_img_key: str = "filepath", csv_caption_key: str = "caption"):
    """A :class:`~lsb_mm.data.readers.Source` from a path, told apart by its shape (``kind``
    overrides): a ``.jsonl`` file or a folder with ``corpus.jsonl`` (BEIR) is a ``corpus``; ``.csv``
    / ``.tsv`` a ``csv``; ``.parquet`` files (a file, a folder of them, a glob) ``parquet``; ``.tar``
    likewise ``tar``; any other folder ``images``."""
    from lsb_mm.data.readers import SOURCES, Source

    if isinstance(source, Source):
        if kind is not None and kind != source.kind:
            raise InputError(f"source is a {source.kind} Source; kind={kind!r} contradicts it")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"source must be a path (str or os.PathLike) or a Source, got {type(source).__name__}")
    path = os.fspath(source)
    if kind is None:
        kind = _kind_of(path)
    if kind not in SOURCES:
        raise InputError(f"kind must be one of {list(SOURCES)}, got {kind!r}")
    root = os.path.abspath(image_root) if image_root else None  # absolute: Ray workers run elsewhere
    return Source(kind, os.path.abspath(path), csv_img_key, csv_caption_key, root)


def _kind_of(path: str) -> str:
    if any(c in path for c in "*?["):  # a glob: what it matches (or, matching nothing yet, its own extension)
        exts = {os.path.splitext(p)[1].lower() for p in glob.glob(path)} or {os.path.splitext(path)[1].lower()}
        kinds = {_EXT_KIND.get(e) for e in exts}
        if len(kinds) == 1 and kinds <= {"parquet", "tar"}:
            return kinds.pop()
        raise InputError(f"source {path}: a glob must name .parquet or .tar files (it matches {sorted(exts)})")
    if os.path.isfile(path):
        kind = _EXT_KIND.get(os.path.splitext(path)[1].lower())
        if kind is None:
            raise InputError(f"source {path}: a file must be .jsonl, .csv, .tsv, .parquet or .tar (or pass kind=)")
        return kind
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "corpus.jsonl")):
            return "corpus"
        exts = {os.path.splitext(n)[1].lower() for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))}
        for ext in (".parquet", ".tar"):
            if exts == {ext}:
                return _EXT_KIND[ext]
        return "images"
    raise InputError(f"source {path}: no such file or folder")


def build_index(model: Any, source: Any, output: Optional[str] = None, *, kind: Optional[str] = None,
                engine: str = "memory", factory: str = "Flat", bm25: bool = False,
                max_memory: Union[str, int, None] = None, target_recall: Optional[float] = None,
                device: str = "auto", batch_size: int = 64, num_workers: int = 2, shard_size: int = 8192,
                embeddings: Optional[str] = None, embedding_dtype: str = "float32", replicas: int = 2,
                address: Optional[str] = None, overwrite: bool = False, shard: Optional[str] = None,
                skip_bad: bool = False, image_root: Optional[str] = None, csv_img_key: str = "filepath",
                csv_caption_key: str = "caption", model_options: Optional[Dict[str, Any]] = None,
                model_device: str = "auto", show_progress_bar: Optional[bool] = None):
    """Encode the documents of ``source`` (``role="document"``) and index them; returns the
    :class:`~lsb_mm.Index`, saved to ``output`` when given. ``index.build_report`` says what ran.
    Each argument is the ``lsb-mm index`` flag of the same name (errors name the flag).

    Args:
        model: an :class:`~lsb_mm.LSBModel`, or a name or saved folder for :func:`lsb_mm.create_model`
            (with ``model_options``); the ``ray`` engine's workers rebuild it from that name, or from a
            copy of the model saved beside the shards. ``model_device`` places a model given by name
            (``auto``: CUDA when available).
        source: a path (see :func:`source_of`) or a ``Source``; ``kind`` overrides the guess.
        engine: ``memory`` (encode here, then index), ``local`` / ``ray`` (resumable embedding shards
            in ``embeddings``, default ``OUTPUT.embeddings``, then the index a block at a time).
        factory: a FAISS factory string (``Flat``, ``HNSW32``, ``IVF1024,SQ8``, ``BFlat`` ...) or
            ``auto`` (chosen under ``max_memory``, e.g. ``"4G"``, tuned to ``target_recall``).
        bm25: index each document's text (an image's caption) with BM25 too, for ``search_hybrid``.
        device: where the index lives: ``auto`` (all GPUs FAISS sees), ``cpu`` or ``gpu``.
        shard: ``"i/n"``, index only that slice of the documents (memory engine).
        skip_bad: skip unreadable images (memory engine), listed in ``OUTPUT.skipped.jsonl`` (without an
            output, in ``build_report["skipped_files"]``); ``build_report["skipped"]`` counts them.
        show_progress_bar: progress bars, as in ``encode_document`` (default: when stderr is a terminal).
    """
    from lsb_mm.retrieval.autoindex import parse_memory

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if max_memory is not None and factory != "auto":
        raise InputError(f"--max-index-memory applies to --factory auto (got --factory {factory})")
    if target_recall is not None and not 0 < target_recall <= 1:
        raise InputError(f"--target-recall must be in (0, 1], got {target_recall}")
    if max_memory is not None:
        parse_memory(max_memory)
    positive_int(batch_size, "--batch-size")
    if output is not None:
        check_replaceable(output, "manifest.json", "an lsb-mm index")  # before any encoding
    show_progress_bar = sys.stderr.isatty() if show_progress_bar is None else bool(show_progress_bar)
    src = source_of(source, kind, image_root=image_root, csv_img_key=csv_img_key, csv_caption_key=csv_caption_key)
    if engine == "memory":
        index, report = _in_memory(model, src, factory, bm25, max_memory, target_recall, device, batch_size, num_workers,
                                   shard_size, shard, skip_bad, model_options, model_device, show_progress_bar, output)
    else:
        for what, value in (("--shard", shard), ("--skip-bad", skip_bad)):
            if value:
                raise InputError(f"{what} applies to --engine memory (the shards of --engine {engine} are its units)")
        index, report = _from_shards(model, src, output, engine, factory, bm25, max_memory, target_recall, device,
                                     batch_size, num_workers, shard_size, embeddings, embedding_dtype, replicas, address,
                                     overwrite, model_options, model_device, show_progress_bar)
    if output is not None:
        index.save(output)
    index.build_report = {"index": output, **report}
    return index


def _model(model: Any, options: Optional[Dict[str, Any]], device: str):
    """``(model, spec)``: the model itself, and what :func:`lsb_mm.create_model` rebuilds it from
    (``None`` for a model given as an object)."""
    from lsb_mm.models.model import LSBModel

    if isinstance(model, LSBModel):
        if options:
            raise InputError("model_options apply to a model given by name, not to an LSBModel")
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be an LSBModel, a model name or a saved folder, got {type(model).__name__}")
    from lsb_mm.models.factory import create_model

    spec = {"name": os.fspath(model), **(options or {})}
    if os.path.exists(spec["name"]):  # a saved model folder, found by the workers wherever they run
        spec["name"] = os.path.abspath(spec["name"])
    return create_model(**spec, device=device), spec  # "auto": CUDA when available


def _bm25_texts(ids: Sequence[str], texts: Sequence[Optional[str]]) -> List[str]:
    missing = [i for i, t in zip(ids, texts) if not t]
    if missing:
        raise InputError(f"--bm25 indexes each document's text (images: their caption); {len(missing)} of "
                         f"{len(texts)} have none, e.g. {missing[0]!r}")
    return list(texts)


def _in_memory(model, src, factory, bm25, max_memory, target_recall, device, batch_size, num_workers, shard_size, shard,
               skip_bad, model_options, model_device, show_progress_bar, output):
    from lsb_mm.data.documents import shard_slice
    from lsb_mm.data.readers import plan_units, read_units
    from lsb_mm.scale.engine import encode_documents
    from lsb_mm.data.images import check_images
    from lsb_mm.retrieval.index import Index

    units = plan_units(src, shard_size)
    docs = read_units(units)
    windows: Any = [len(u) for u in units]  # encoded unit by unit, as the sharded engines do: the same bits
    if shard:
        docs = docs.subset(list(shard_slice(len(docs.ids), shard)))
        windows = shard_size
    skipped: List = []
    if docs.kind == "image" and skip_bad:
        good, skipped = check_images(docs.items)
        keep = set(good)
        docs = docs.subset([i for i, p in enumerate(docs.items) if p in keep])
        windows = shard_size
    model, _ = _model(model, model_options, model_device)
    t0 = time.perf_counter()
    emb = encode_documents(model, docs, batch_size, windows, num_workers, show_progress_bar=show_progress_bar)
    t_enc = time.perf_counter() - t0
    index = Index.build(emb, ids=docs.ids, metadata=docs.metadata, factory=factory, device=device,
                        fingerprint=model.fingerprint(), max_memory=max_memory, target_recall=target_recall)
    if bm25:
        index.add_bm25(_bm25_texts(docs.ids, docs.items if docs.kind == "text" else [m.get("caption") for m in docs.metadata]))
    report_path = None
    if skipped and output is not None:  # beside the index; without an output, only in build_report
        report_path = output.rstrip("/") + ".skipped.jsonl"
        write_text(report_path, "".join(json.dumps({"path": p, "reason": r}) + "\n" for p, r in skipped))
        print(f"skipped {len(skipped)} unreadable files; see {report_path}", file=sys.stderr)
    elif skipped:
        print(f"skipped {len(skipped)} unreadable files; see build_report['skipped_files']", file=sys.stderr)
    return index, {"count": len(index), "kind": docs.kind, "factory": index.factory, "bm25": bm25,
                   **({"build": index.build_info} if index.build_info else {}), "device": index.device,
                   "encode_seconds": round(t_enc, 2), "skipped": len(skipped), "skipped_report": report_path,
                   **({} if output is not None else {"skipped_files": [{"path": p, "reason": r} for p, r in skipped]}),
                   "fingerprint": index.fingerprint}


def _from_shards(model, src, output, engine, factory, bm25, max_memory, target_recall, device, batch_size, num_workers,
                 shard_size, embeddings, embedding_dtype, replicas, address, overwrite, model_options, model_device,
                 show_progress_bar):
    """Encode into resumable embedding shards (``local``: this process; ``ray``: Ray Data actors),
    then build the index from them a block at a time."""
    from lsb_mm.data.readers import plan_units, read_unit
    from lsb_mm.scale.engine import run_job
    from lsb_mm.retrieval.index import Index
    from lsb_mm.scale.shards import EmbeddingShards

    positive_int(replicas, "--replicas")
    if embeddings is None and output is None:
        raise InputError(f"--engine {engine} writes its shards to --embeddings (default OUTPUT.embeddings): give it or --output")
    given = embeddings or output.rstrip("/") + ".embeddings"
    folder = os.path.abspath(given)  # absolute: Ray workers may run in another folder
    if output is not None:
        out = os.path.abspath(output)
        if folder == out or folder.startswith(out + os.sep):
            raise InputError(f"--embeddings {given} is inside --output {output}, which is replaced when the index "
                             "is written; keep the shards beside it (the default: OUTPUT.embeddings)")
    units = plan_units(src, shard_size)
    # ray: the driver only needs the model's fingerprint; the actors hold the GPUs
    model, spec = _model(model, model_options, "cpu" if engine == "ray" else model_device)
    fingerprint = model.fingerprint()
    shards = EmbeddingShards.open(folder, units, fingerprint, embedding_dtype, overwrite=overwrite)
    if engine == "ray" and spec is None:  # a model given as an object: the workers load a saved copy
        copy = os.path.join(folder, f"model-{fingerprint}")
        if not os.path.isfile(os.path.join(copy, "lsb_config.json")):
            model.save_pretrained(copy)
        spec = {"name": copy}
    job = run_job(shards, spec or {}, engine, replicas=replicas, batch_size=batch_size, address=address,
                  show_progress_bar=show_progress_bar, num_workers=num_workers, model=model if engine == "local" else None)
    t0 = time.perf_counter()
    rows = shards.rows()
    kind = shards.kind()  # one kind in one index: text shards beside image shards are refused
    ids, metadata = shards.ids_and_metadata()
    index = Index.build(rows, ids=ids, metadata=metadata, factory=factory, device=device,
                        fingerprint=fingerprint, max_memory=max_memory, target_recall=target_recall)
    if bm25:
        if kind == "text":  # read from the source again: its ids must still be the shards' ids
            texts: List[str] = []
            for u in units:
                docs = read_unit(u)
                if docs.ids != ids[len(texts):len(texts) + len(docs.ids)]:
                    raise InputError(f"{u.path}: its documents {u.start + 1}..{u.stop} are no longer those of shard "
                                     f"{u.shard} (the source changed since it was encoded); rerun with --overwrite")
                texts += docs.items
        else:
            texts = [m.get("caption") for m in metadata]
        index.add_bm25(_bm25_texts(ids, texts))
    return index, {"count": len(index), "factory": index.factory, "bm25": bm25,
                   **({"build": index.build_info} if index.build_info else {}), "device": index.device,
                   "embeddings": folder, "shards": len(units), "job": job,
                   "index_seconds": round(time.perf_counter() - t0, 2), "fingerprint": index.fingerprint}
