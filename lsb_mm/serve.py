"""``lsb-mm serve``: an HTTP search service over one model and named index folders (FastAPI).

    app = create_app(SearchService(model, {"photos": "photos.index"}), api_key=None)

Endpoints: ``GET /health``, ``GET /info``, ``POST /search`` (JSON ``{"index", "text" | "image"
(base64), "k", "role", "enhance"}``, or a multipart form with an ``image`` file),
``GET /items/{index}/{id}`` and ``GET /items/{index}/{id}/thumbnail``. Items are looked up by id
among the index's own ids; a path is never taken from a request. Every bad request gets a 4xx with
a JSON ``{"error": ...}`` that says what was wrong; bodies over ``max_body`` bytes are refused
(413), images over the pixel limit too (:func:`lsb_mm.images.max_image_pixels`). It binds
127.0.0.1 unless told otherwise; ``api_key`` is checked in the ``X-API-Key`` header.
"""
# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime
import base64
import binascii
import hmac
import io
import os
import time
from typing import Any, Dict, Optional

from .errors import ImageLoadError, InputError, LSBError, positive_int

__all__ = ["SearchService", "create_app", "MAX_K", "MAX_BODY"]

MAX_K = 1000  # results per request
MAX_BODY = 16 << 20  # bytes per request body (an upload, or base64 JSON)
THUMBNAIL = 256  # longest side of a thumbnail, pixels


class ServiceError(Exception):
    """A bad request: ``status`` (4xx) and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SearchService:
    """One model and named index folders; ``search`` encodes one query and searches one index."""

    def __init__(self, model, indexes: Dict[str, str], device: str = "auto"):
        from .index import Index

        if not indexes:
            raise InputError("serve needs at least one --index NAME=FOLDER")
        self.model = model
        self.folders = dict(indexes)
        self.indexes = {name: Index.load(folder, device=device) for name, folder in self.folders.items()}
        fp = model.fingerprint()
        for name, ix in self.indexes.items():
            if ix.fingerprint is not None and ix.fingerprint != fp:
                raise InputError(f"index {name} ({self.folders[name]}) was built from model {ix.fingerprint}, the "
                                 f"served model is {fp}: serve the model that built it (or rebuild the index)")
        self._rows = {name: {i: n for n, i in enumerate(ix.ids)} for name, ix in self.indexes.items()}

    def index(self, name: str):
        if name not in self.indexes:
            raise ServiceError(404, f"unknown index {name!r}; this service has {sorted(self.indexes)}")
        return self.indexes[name]

    def item(self, name: str, item_id: str) -> Dict[str, Any]:
        ix = self.index(name)
        row = self._rows[name].get(item_id)
        if row is None:
            raise ServiceError(404, f"index {name!r} has no item {item_id!r}")
        meta = dict(ix.metadata[row]) if ix.metadata is not None else {}
        return {"id": item_id, "metadata": meta}

    def search(self, name: str, text: Optional[str] = None, image=None, k: int = 10, role: str = "query",
               enhance: bool = True) -> Dict[str, Any]:
        ix = self.index(name)
        if (text is None) == (image is None):
            raise ServiceError(422, "give exactly one of 'text' and 'image'")
        if role not in ("query", "document"):
            raise ServiceError(422, f"'role' must be 'query' or 'document', got {role!r}")
        try:
            k = positive_int(k, "'k'")
        except InputError as exc:
            raise ServiceError(422, str(exc)) from None
        if k > MAX_K:
            raise ServiceError(422, f"'k' must be at most {MAX_K}, got {k}")
        t0 = time.perf_counter()
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ServiceError(422, "'text' must be a non-empty string")
            q = self.model.encode_text([text], role=role, enhance=enhance, show_progress_bar=False)
        else:
            q = self.model.encode_image([image], role=role, enhance=enhance, show_progress_bar=False)
        t1 = time.perf_counter()
        scores, ids = ix.search(q, k=k, fingerprint=self.model.fingerprint())
        hits = []
        for rank, (score, item_id) in enumerate(zip(scores[0], ids[0]), 1):
            if item_id is None:
                continue
            meta = self.item(name, item_id)["metadata"]
            hits.append({"rank": rank, "id": item_id, "score": float(score), "metadata": meta,
                         "thumbnail": f"/items/{name}/{item_id}/thumbnail" if _image_path(meta) else None})
        return {"index": name, "k": k, "hits": hits,
                "seconds": {"encode": round(t1 - t0, 4), "search": round(time.perf_counter() - t1, 4)}}

    def thumbnail(self, name: str, item_id: str) -> bytes:
        from .images import load_image

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
        return {"model": getattr(m, "name", None), "fingerprint": m.fingerprint(), "heads": heads,
                "embed_dim": getattr(m, "embed_dim", None),
                "indexes": {name: {"folder": self.folders[name], "factory": ix.factory, "dim": ix.dim, "count": len(ix),
                                   "device": ix.device} for name, ix in self.indexes.items()}}


def _image_path(meta: Dict[str, Any]) -> Optional[str]:
    path = meta.get("path")
    return path if isinstance(path, str) and os.path.isfile(path) else None


def _decode_base64_image(data: Any):
    from .images import load_image_bytes

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


def create_app(service: SearchService, api_key: Optional[str] = None, max_body: int = MAX_BODY,
               cors_origins: Optional[list] = None):
    """The FastAPI app of ``service``: endpoints above; ``cors_origins`` turns CORS on for them."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="lsb-mm search", description="LexSemBridge search over lsb-mm index folders.")
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
        from .errors import user_message

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

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if api_key is not None and request.url.path not in ("/health",):
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error(401, "missing or wrong X-API-Key header")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return error(413, f"request body over {max_body} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return service.info()

    @app.post("/search")
    async def search(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if len(body) > max_body:
            return error(413, f"request body over {max_body} bytes")
        if ctype == "application/json":
            import json

            try:
                req = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                return error(400, f"malformed JSON: {exc}")
            if not isinstance(req, dict):
                return error(422, "the body must be a JSON object")
            unknown = sorted(set(req) - {"index", "text", "image", "k", "role", "enhance"})
            if unknown:
                return error(422, f"unknown field(s) {unknown}")
            image = _decode_base64_image(req["image"]) if "image" in req and req["image"] is not None else None
            enhance = req.get("enhance", True)
            if not isinstance(enhance, bool):
                return error(422, f"'enhance' must be true or false, got {enhance!r}")
            return service.search(_index_name(req.get("index")), req.get("text"), image, req.get("k", 10),
                                  req.get("role", "query"), enhance)
        if ctype == "multipart/form-data":
            from .images import load_image_bytes

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
            return service.search(_index_name(form.get("index")), None, img, int(k), str(form.get("role", "query")))
        return error(415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data")

    @app.get("/items/{index}/{item_id:path}/thumbnail")
    async def thumbnail(index: str, item_id: str):
        return Response(service.thumbnail(index, item_id), media_type="image/png")

    @app.get("/items/{index}/{item_id:path}")
    async def item(index: str, item_id: str):
        return service.item(index, item_id)

    return app


def _index_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ServiceError(422, "'index' must name one of the served indexes")
    return value
