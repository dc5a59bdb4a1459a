"""The search service behind ``lsb-mm serve``: one model, named index folders, queries answered
in batches (the HTTP side: :mod:`lsb_mm.serving.app`; the batching: :mod:`lsb_mm.serving.batcher`).

    app = create_app(SearchService(model, {"photos": "photos.index"}), api_key=None)

Endpoints: the search page at ``/`` (no external resources), ``GET /health``, ``GET /info``,
``POST /search`` (JSON ``{"index", "text" | "image" (base64) | "like" (an item id), "k", "role",
"enhance", "tokens"}``, or a multipart form with an ``image`` file), ``GET /items/{index}/{id}``
and ``/items/{index}/{id}/thumbnail``, and ``POST /admin/reload``. Items are looked up by id among
the index's own ids; a path is never taken from a request. Concurrent queries are batched
(:class:`Batcher`) into one encode call. Every bad request gets a 4xx with a JSON ``{"error": ...}``
saying what was wrong; bodies over ``max_body`` bytes are refused (413, counted while streaming),
images over the pixel limit too (:func:`lsb_mm.data.images.max_image_pixels`). It binds 127.0.0.1
unless told otherwise; ``api_key`` is checked in the ``X-API-Key`` header.
"""
from __future__ import annotations

import io
import os
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import quote

from lsb_mm.errors import ImageLoadError, InputError, LSBError, positive_int

__all__ = ["SearchService", "Query", "ServiceError", "MAX_K", "MAX_BODY"]

MAX_K = 1000  # results per request
MAX_BODY = 16 << 20  # bytes per request body (an upload, or base64 JSON)
THUMBNAIL = 256  # longest side of a thumbnail, pixels


class ServiceError(Exception):
    """A bad request: ``status`` (4xx) and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Query(NamedTuple):
    """One validated search: ``index``, exactly one of ``text`` / ``image`` (a PIL image), ``k``,
    ``role``, ``enhance`` and whether to list the query ``tokens`` behind the modulation."""
    index: str
    text: Optional[str]
    image: Any
    k: int
    role: str = "query"
    enhance: bool = True
    tokens: bool = False


class _Served(NamedTuple):
    index: Any  # lsb_mm.retrieval.index.Index
    rows: Dict[str, int]  # id -> row
    loaded_at: float
    modulation: Optional[Dict[str, float]]  # of the query-side head(s) on a probe of the index's items

    def metadata(self, item_id: str) -> Dict[str, Any]:
        """A copy of the metadata of ``item_id`` (an id of this index), ``{}`` without metadata."""
        return dict(self.index.metadata[self.rows[item_id]]) if self.index.metadata is not None else {}


class SearchService:
    """One model and named index folders. :meth:`query` validates a request, :meth:`run` answers a
    list of queries with one encode call per (modality, role, enhance) group, and :meth:`reload`
    swaps in a rebuilt folder (the old index keeps answering when that fails)."""

    PROBE = 32  # index items encoded as queries for the modulation strength in /info

    def __init__(self, model, indexes: Dict[str, str], device: str = "auto"):
        if not indexes:
            raise InputError("serve needs at least one --index NAME=FOLDER")
        self.model, self.device = model, device
        self.folders = dict(indexes)
        self._fingerprint = model.fingerprint()
        self._served = {name: self._open(name, folder) for name, folder in self.folders.items()}
        self._reload_lock = threading.Lock()

    def _open(self, name: str, folder: str) -> _Served:
        from lsb_mm.models.explain import modulation_of
        from lsb_mm.retrieval.index import Index

        ix = Index.load(folder, device=self.device)
        if ix.fingerprint is not None and ix.fingerprint != self._fingerprint:
            raise InputError(f"index {name} ({folder}) was built from model {ix.fingerprint}, the served model is "
                             f"{self._fingerprint}: serve the model that built it (or rebuild the index)")
        rows = {i: n for n, i in enumerate(ix.ids)}
        probe = (ix.metadata or [])[:: max(1, len(ix) // self.PROBE)][: self.PROBE]
        texts = [m.get("text") or m.get("caption") for m in probe if self.model.has_text and (m.get("text") or m.get("caption"))]
        images = [p for p in map(_image_path, probe) if p is not None and self.model.has_image and not texts]
        return _Served(ix, rows, time.time(), modulation_of(self.model, texts, images))

    def served(self, name: str) -> _Served:
        served = self._served.get(name)
        if served is None:
            raise ServiceError(404, f"unknown index {name!r}; this service has {sorted(self._served)}")
        return served

    def index(self, name: str):
        return self.served(name).index

    def item(self, name: str, item_id: str) -> Dict[str, Any]:
        served = self.served(name)
        if item_id not in served.rows:
            raise ServiceError(404, f"index {name!r} has no item {item_id!r}")
        return {"id": item_id, "metadata": served.metadata(item_id)}

    def query(self, name: Any, text: Any = None, image: Any = None, k: Any = 10, role: Any = "query",
              enhance: Any = True, like: Any = None, tokens: Any = False) -> Query:
        """Validate one request (``like``: the id of an item of ``name`` whose image, else text, is the query)."""
        if not isinstance(name, str) or not name:
            raise ServiceError(422, "'index' must name one of the served indexes")
        self.served(name)
        if sum(x is not None for x in (text, image, like)) != 1:
            raise ServiceError(422, "give exactly one of 'text', 'image' and 'like'")
        if like is not None:
            if not isinstance(like, str):
                raise ServiceError(422, f"'like' must be an item id (a string), got {like!r}")
            text, image = self._like(name, like)
        if role not in ("query", "document"):
            raise ServiceError(422, f"'role' must be 'query' or 'document', got {role!r}")
        for field, value in (("enhance", enhance), ("tokens", tokens)):
            if not isinstance(value, bool):
                raise ServiceError(422, f"'{field}' must be true or false, got {value!r}")
        try:
            k = positive_int(k, "'k'")
        except InputError as exc:
            raise ServiceError(422, str(exc)) from None
        if k > MAX_K:
            raise ServiceError(422, f"'k' must be at most {MAX_K}, got {k}")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ServiceError(422, "'text' must be a non-empty string")
        if text is not None and not self.model.has_text or image is not None and not self.model.has_image:
            raise ServiceError(422, f"the served model {self.model.name} has no {'text' if text is not None else 'image'} tower")
        return Query(name, text, image, k, role, enhance, tokens and text is not None)

    def _like(self, name: str, item_id: str):
        from lsb_mm.data.images import load_image

        meta = self.item(name, item_id)["metadata"]
        path = _image_path(meta)
        if path is not None and self.model.has_image:
            try:
                return None, load_image(path)
            except ImageLoadError as exc:
                raise ServiceError(404, f"item {item_id!r}: {exc}") from None
        text = meta.get("text") or meta.get("caption")
        if isinstance(text, str) and text.strip():
            return text, None
        raise ServiceError(422, f"item {item_id!r} of index {name!r} has neither a readable image nor a text to search with")

    def search(self, name: str, text: Optional[str] = None, image=None, k: int = 10, role: str = "query",
               enhance: bool = True, like: Optional[str] = None, tokens: bool = False) -> Dict[str, Any]:
        """One query, answered at once (no batching)."""
        result = self.run([self.query(name, text, image, k, role, enhance, like, tokens)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def run(self, queries: Sequence[Query]) -> List[Any]:
        """Answer validated queries: one encode call per (modality, role, enhance) group and one FAISS
        search per index within it. Each entry is a result dict, or the exception that query raised."""
        results: List[Any] = [None] * len(queries)
        groups: Dict[Tuple[bool, str, bool], List[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[(q.image is not None, q.role, q.enhance)].append(i)
        for (is_image, role, enhance), members in groups.items():
            t0 = time.perf_counter()
            try:
                if is_image:
                    emb = self.model.encode_image([queries[i].image for i in members], role=role, enhance=enhance,
                                                  batch_size=len(members), show_progress_bar=False)
                else:
                    emb = self._encode_texts([queries[i].text for i in members], role, enhance)
            except Exception as exc:
                if len(members) == 1:
                    results[members[0]] = exc
                else:  # one bad query must not fail the others: answer them one by one
                    for i in members:
                        results[i] = self.run([queries[i]])[0]
                continue
            encode_s = time.perf_counter() - t0
            by_index: Dict[str, List[int]] = defaultdict(list)
            for row, i in enumerate(members):
                by_index[queries[i].index].append(row)
            for name, rows in by_index.items():
                t1 = time.perf_counter()
                try:
                    served = self.served(name)
                    k = min(max(queries[members[r]].k for r in rows), len(served.index))
                    scores, ids = served.index.search(emb[rows], k=k, fingerprint=self._fingerprint)
                except Exception as exc:
                    for r in rows:
                        results[members[r]] = exc
                    continue
                search_s = time.perf_counter() - t1
                for j, r in enumerate(rows):
                    q = queries[members[r]]
                    results[members[r]] = self._result(q, served, scores[j][: q.k], ids[j][: q.k],
                                                       {"encode": round(encode_s, 4), "search": round(search_s, 4),
                                                        "batch": len(members)})
        return results

    def _encode_texts(self, texts: List[str], role: str, enhance: bool):
        """Texts encoded in runs of similar length (a batch is padded to its longest text: one long
        query must not make thirty short ones cost what it costs), in the given order."""
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = None
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(texts[order[end]]) <= 2 * len(texts[order[start]]) + 16:
                end += 1
            rows = order[start:end]
            emb = self.model.encode_text([texts[i] for i in rows], role=role, enhance=enhance, batch_size=len(rows),
                                         show_progress_bar=False)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=emb.dtype)
            out[rows] = emb
            start = end
        return out

    def _result(self, q: Query, served: _Served, scores, ids, seconds: Dict[str, Any]) -> Dict[str, Any]:
        hits = []
        for rank, (score, item_id) in enumerate(zip(scores, ids), 1):
            if item_id is None:
                continue
            meta = served.metadata(item_id)
            hits.append({"rank": rank, "id": item_id, "score": float(score), "metadata": meta,
                         "thumbnail": f"/items/{q.index}/{quote(item_id, safe='/')}/thumbnail" if _image_path(meta) else None})
        out = {"index": q.index, "k": q.k, "enhance": q.enhance, "query": {"text": q.text} if q.text is not None else {"image": True},
               "hits": hits, "seconds": seconds}
        if q.tokens:
            out.update(self._tokens(q.text))
        return out

    def _tokens(self, text: str) -> Dict[str, Any]:
        """The query tokens behind the text head's modulation (:func:`lsb_mm.models.explain.explain`)."""
        from lsb_mm.models.explain import explain

        if not self.model.fusion["query"] or not hasattr(self.model.text_head, "modulation"):
            kind = getattr(self.model.text_head, "kind", None)
            return {"tokens": None, "tokens_note": f"the {kind!r} text head has no token-aware query modulation"}
        ex = explain(self.model, text=text, top=8)
        return {"tokens": [{"token": t["token"], "w": t["w"], "contribution": t["contribution"]} for t in ex["tokens"]],
                "modulation": ex["modulation"]}

    def reload(self, name: str) -> Dict[str, Any]:
        """Re-read the folder served as ``name`` and swap it in at once; on any failure the old index
        keeps answering and the error says why."""
        old = self.served(name)
        folder = self.folders[name]
        with self._reload_lock:
            try:
                new = self._open(name, folder)
            except Exception as exc:
                from lsb_mm.errors import user_message

                why = user_message(exc) if isinstance(exc, (LSBError, OSError)) else f"{type(exc).__name__}: {exc}"
                raise ServiceError(409, f"reload of index {name!r} from {folder} failed; still serving the index "
                                        f"loaded at {_when(old.loaded_at)} ({len(old.index)} items): {why}") from None
            self._served = {**self._served, name: new}  # one reference swap: a search sees the old or the new index
        return {"index": name, "folder": folder, "count": len(new.index), "previous_count": len(old.index),
                "loaded_at": _when(new.loaded_at)}

    def thumbnail(self, name: str, item_id: str) -> bytes:
        from lsb_mm.data.images import load_image

        path = _image_path(self.item(name, item_id)["metadata"])
        if path is None:
            raise ServiceError(404, f"item {item_id!r} of index {name!r} is not an image")
        try:
            img = load_image(path)
        except ImageLoadError as exc:
            raise ServiceError(404, f"item {item_id!r}: {exc}") from None
        img.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def info(self) -> Dict[str, Any]:
        m = self.model
        heads = {side: getattr(getattr(m, f"{side}_head", None), "kind", None) for side in ("text", "image")}
        return {"model": getattr(m, "name", None), "fingerprint": self._fingerprint, "heads": heads,
                "embed_dim": getattr(m, "embed_dim", None), "towers": {"text": m.has_text, "image": m.has_image},
                "indexes": {name: {"folder": self.folders[name], "factory": s.index.factory, "dim": s.index.dim,
                                   "count": len(s.index), "device": s.index.device, "loaded_at": _when(s.loaded_at),
                                   "modulation": s.modulation}
                            for name, s in self._served.items()}}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _image_path(meta: Dict[str, Any]) -> Optional[str]:
    path = meta.get("path")
    return path if isinstance(path, str) and os.path.isfile(path) else None
