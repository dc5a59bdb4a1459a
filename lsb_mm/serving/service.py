"""``lsb-mm serve``: an HTTP search service over one model and named index folders (FastAPI).

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
# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime
import asyncio
import contextlib
import base64
import binascii
import hmac
import io
import os
import queue
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import quote

from lsb_mm.errors import ImageLoadError, InputError, LSBError, positive_int

__all__ = ["SearchService", "Batcher", "Query", "create_app", "serve_forever", "running_server", "MAX_K", "MAX_BODY"]

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


class Batcher:
    """Dynamic batching: queries submitted from the event loop are grouped (up to ``max_batch``;
    all that are queued, plus, while the last batch held more than one, those arriving within
    ``max_wait`` seconds of the first) and answered by ``run`` in one worker,
    the only thread that runs the model. ``max_batch=1`` turns grouping off. The worker is a
    thread started on the first query, or the caller of :meth:`run_here` (``lsb-mm serve`` runs it
    in the main thread: torch's CPU kernels run fastest there)."""

    def __init__(self, run, max_batch: int = 32, max_wait: float = 0.002):
        if max_batch < 1 or max_wait < 0:
            raise InputError(f"batching: max_batch must be >= 1 and max_wait >= 0, got {max_batch}, {max_wait}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.stats = {"batches": 0, "queries": 0, "largest": 0}
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._here = False
        self._last = 0  # size of the last batch
        self._start_lock = threading.Lock()

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._thread is None and not self._here:
            with self._start_lock:
                if self._thread is None and not self._here:
                    self._thread = threading.Thread(target=self._work, name="lsb-mm-batcher", daemon=True)
                    self._thread.start()
        self._queue.put((item, loop, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def run_here(self) -> None:
        """Be the worker in the calling thread until :meth:`close`."""
        self._here = True
        self._work()

    def close(self) -> None:
        """Stop the worker once the queries already queued are answered (safe to call from any thread)."""
        self._queue.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
            self._thread = None

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # wait for company only under load (the last batch was shared): a lone client pays no wait
            deadline = time.monotonic() + (self.max_wait if self._last > 1 else 0.0)
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                results = self.run([item for item, _, _ in batch])
            except BaseException as exc:  # run answers per query; this is a bug in it: fail the batch, keep serving
                results = [exc] * len(batch)
            self.stats["batches"] += 1
            self.stats["queries"] += len(batch)
            self.stats["largest"] = max(self.stats["largest"], len(batch))
            self._last = len(batch)
            for (_, loop, future), result in zip(batch, results):
                loop.call_soon_threadsafe(_settle, future, result)


def serve_forever(app, host: str, port: int) -> int:
    """Serve ``app`` (from :func:`create_app`) with uvicorn in a thread while its batcher works in
    this one, until SIGINT / SIGTERM. Returns 0, or 1 when the address could not be listened on."""
    import signal

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    batcher: Batcher = app.state.batcher

    def http() -> None:
        try:
            server.run()
        finally:
            batcher.close()  # the HTTP side ended (stopped, or never bound): so does the worker

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: batcher.close())
    web = threading.Thread(target=http, name="lsb-mm-http", daemon=True)
    web.start()
    batcher.run_here()
    server.should_exit = True
    web.join(timeout=15)
    return 0 if server.started else 1


def _settle(future, result) -> None:
    if not future.done():
        future.set_result(result)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _image_path(meta: Dict[str, Any]) -> Optional[str]:
    path = meta.get("path")
    return path if isinstance(path, str) and os.path.isfile(path) else None


def _decode_base64_image(data: Any):
    from lsb_mm.data.images import load_image_bytes

    if not isinstance(data, str) or not data:
        raise ServiceError(422, "'image' must be a base64 string")
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, "'image' is not valid base64") from None
    try:
        return load_image_bytes(raw, "the uploaded image")
    except ImageLoadError as exc:
        raise ServiceError(422, str(exc)) from None


OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json")  # no data behind them: open even with an API key


def create_app(service: SearchService, api_key: Optional[str] = None, max_body: int = MAX_BODY,
               cors_origins: Optional[list] = None, batching: bool = True, max_batch: int = 32,
               max_wait_ms: float = 2.0):
    """The FastAPI app of ``service``: the endpoints above and the search page at ``/``.
    ``batching`` groups concurrent queries into one encode call (``max_batch``, ``max_wait_ms``);
    off, each query is encoded alone. ``cors_origins`` turns CORS on for those origins."""
    from lsb_mm.errors import require_extra

    require_extra("serve", "the search service", "fastapi")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    batcher = Batcher(service.run, max_batch=max_batch if batching else 1, max_wait=max_wait_ms / 1000 if batching else 0)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="lsb-mm search", description="LexSemBridge search over lsb-mm index folders.", lifespan=lifespan)
    app.state.service, app.state.batcher = service, batcher
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc: ServiceError):
        return error(exc.status, str(exc))

    @app.exception_handler(LSBError)
    async def _lsb_error(request, exc: LSBError):
        from lsb_mm.errors import user_message

        return error(422, user_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # a bug: say so without a traceback in the response
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    app.add_middleware(_Guard, api_key=api_key, max_body=max_body)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_page())

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {**service.info(), "batching": {"on": batching, "max_batch": batcher.max_batch,
                                               "max_wait_ms": batcher.max_wait * 1000, **batcher.stats}}

    @app.post("/search")
    async def search(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            return error(415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data")
        body = await _read_body(request, max_body)
        if ctype == "application/json":
            import json

            try:
                req = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                return error(400, f"malformed JSON: {exc}")
            if not isinstance(req, dict):
                return error(422, "the body must be a JSON object")
            unknown = sorted(set(req) - {"index", "text", "image", "like", "k", "role", "enhance", "tokens"})
            if unknown:
                return error(422, f"unknown field(s) {unknown}")
            image = _decode_base64_image(req["image"]) if req.get("image") is not None else None
            q = service.query(req.get("index"), req.get("text"), image, req.get("k", 10), req.get("role", "query"),
                              req.get("enhance", True), req.get("like"), req.get("tokens", False))
        else:
            from lsb_mm.data.images import load_image_bytes

            form = await request.form()
            upload = form.get("image")
            if upload is None or not hasattr(upload, "read"):
                return error(422, "the form needs an 'image' file")
            try:
                img = load_image_bytes(await upload.read(), getattr(upload, "filename", None) or "the uploaded image")
            except ImageLoadError as exc:
                return error(422, str(exc))
            k = form.get("k", "10")
            if not str(k).isdigit():
                return error(422, f"'k' must be a positive integer, got {k!r}")
            enhance = str(form.get("enhance", "true")).lower()
            if enhance not in ("true", "false"):
                return error(422, f"'enhance' must be true or false, got {enhance!r}")
            q = service.query(form.get("index"), None, img, int(k), str(form.get("role", "query")), enhance == "true")
        return await batcher.submit(q)

    @app.post("/admin/reload")
    async def reload(request: Request):
        import json

        from starlette.concurrency import run_in_threadpool

        body = await _read_body(request, max_body)
        try:
            req = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"malformed JSON: {exc}")
        if not isinstance(req, dict) or set(req) - {"index"}:
            return error(422, 'the body must be {"index": NAME} (or empty to reload every index)')
        names = [req["index"]] if "index" in req else sorted(service.folders)
        for name in names:
            if not isinstance(name, str):
                return error(422, f"'index' must be a string, got {name!r}")
            service.served(name)
        return {"reloaded": [await run_in_threadpool(service.reload, name) for name in names]}

    @app.get("/items/{index}/{item_id:path}/thumbnail")
    def thumbnail(index: str, item_id: str):  # sync: decoding runs in the thread pool, not the event loop
        return Response(service.thumbnail(index, item_id), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/items/{index}/{item_id:path}")
    async def item(index: str, item_id: str):
        return service.item(index, item_id)

    return app


class _Guard:
    """ASGI middleware (plain ASGI: no per-request task as with ``@app.middleware``): the API key
    (except on :data:`OPEN_PATHS`) and a declared Content-Length over the body limit."""

    def __init__(self, app, api_key: Optional[str], max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from fastapi.responses import JSONResponse

            headers = dict(scope["headers"])
            refusal = None
            if self.api_key is not None and scope["path"] not in OPEN_PATHS:
                if not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key.encode()):
                    refusal = (401, "missing or wrong X-API-Key header")
            length = headers.get(b"content-length")
            if refusal is None and length is not None and (not length.isdigit() or int(length) > self.max_body):
                refusal = (413, f"request body over {self.max_body} bytes")
            if refusal is not None:
                return await JSONResponse({"error": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        await self.app(scope, receive, send)


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, with or without a
    Content-Length (a chunked upload is counted as it streams in)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: request.form() then parses these bytes
    return body


def _page() -> str:
    from importlib.resources import files

    return files("lsb_mm.serving").joinpath("static/search.html").read_text(encoding="utf-8")


@contextlib.contextmanager
def running_server(args: Sequence[str], timeout: float = 180.0, env: Optional[Dict[str, str]] = None):
    """``lsb-mm serve ARGS`` in a child process on a free 127.0.0.1 port; yields its base URL once
    ``/health`` answers, and stops it on exit (for benchmarks, tests and notebooks)."""
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lsb_mm", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"lsb-mm serve exited with {proc.returncode}: {log.read()[-2000:]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lsb-mm serve did not answer on {url} within {timeout:.0f} s")
                time.sleep(0.2)
            try:
                yield url
            except BaseException:  # the caller failed: the server's own account goes with its error
                log.seek(0)
                sys.stderr.write(f"--- lsb-mm serve log (last 4000 characters) ---\n{log.read()[-4000:]}\n")
                raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
