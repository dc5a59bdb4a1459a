"""The FastAPI app of ``lsb-mm serve`` over a :class:`~lsb_mm.serving.service.SearchService`:
the routes, errors as JSON, the API key and body limits, and :func:`serve_forever`."""
# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime
import base64
import binascii
import contextlib
import hmac
import json
import threading
from typing import Any, Optional

from lsb_mm.errors import ImageLoadError, LSBError
from lsb_mm.serving.batcher import Batcher
from lsb_mm.serving.service import MAX_BODY, SearchService, ServiceError

__all__ = ["create_app", "serve_forever", "OPEN_PATHS"]

SEARCH_FIELDS = {"index", "text", "image", "like", "k", "role", "enhance", "tokens"}


OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json")  # no data behind them: open even with an API key


def create_app(service: SearchService, api_key: Optional[str] = None, max_body: int = MAX_BODY,
               cors_origins: Optional[list] = None, batching: bool = True, max_batch: int = 32,
               max_wait_ms: float = 2.0):
    """The FastAPI app of ``service``: the endpoints of :mod:`lsb_mm.serving.service` and the search
    page at ``/``. ``batching`` groups concurrent queries into one encode call (``max_batch``,
    ``max_wait_ms``); off, each query is encoded alone. ``cors_origins`` turns CORS on for those origins."""
    from lsb_mm.errors import require_extra

    require_extra("serve", "the search service", "fastapi")
    from fastapi import FastAPI

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
    _add_error_handlers(app)
    app.add_middleware(_Guard, api_key=api_key, max_body=max_body)
    _add_routes(app, service, batcher, batching, max_body)
    return app


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app) -> None:
    """Every error as ``{"error": ...}`` with its status; a bug as a 500 without a traceback."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc: ServiceError):
        return _error(exc.status, str(exc))

    @app.exception_handler(LSBError)
    async def _lsb_error(request, exc: LSBError):
        from lsb_mm.errors import user_message

        return _error(422, user_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # a bug: say so without a traceback in the response
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _add_routes(app, service: SearchService, batcher: Batcher, batching: bool, max_body: int) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse, Response

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
            raise ServiceError(415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data")
        body = await _read_body(request, max_body)
        q = _json_query(service, body) if ctype == "application/json" else await _form_query(service, request)
        return await batcher.submit(q)

    @app.post("/admin/reload")
    async def reload(request: Request):
        from starlette.concurrency import run_in_threadpool

        req = _json_object(await _read_body(request, max_body), allow_empty=True)
        if set(req) - {"index"}:
            raise ServiceError(422, 'the body must be {"index": NAME} (or empty to reload every index)')
        names = [req["index"]] if "index" in req else sorted(service.folders)
        for name in names:
            if not isinstance(name, str):
                raise ServiceError(422, f"'index' must be a string, got {name!r}")
            service.served(name)
        return {"reloaded": [await run_in_threadpool(service.reload, name) for name in names]}

    @app.get("/items/{index}/{item_id:path}/thumbnail")
    def thumbnail(index: str, item_id: str):  # sync: decoding runs in the thread pool, not the event loop
        return Response(service.thumbnail(index, item_id), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/items/{index}/{item_id:path}")
    async def item(index: str, item_id: str):
        return service.item(index, item_id)


def _json_object(body: bytes, allow_empty: bool = False) -> dict:
    """A request body that must be one JSON object (400 if malformed, 422 if not an object)."""
    if allow_empty and not body.strip():
        return {}
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(400, f"malformed JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ServiceError(422, "the body must be a JSON object")
    return req


def _json_query(service: SearchService, body: bytes):
    req = _json_object(body)
    unknown = sorted(set(req) - SEARCH_FIELDS)
    if unknown:
        raise ServiceError(422, f"unknown field(s) {unknown}")
    image = _decode_base64_image(req["image"]) if req.get("image") is not None else None
    return service.query(req.get("index"), req.get("text"), image, req.get("k", 10), req.get("role", "query"),
                         req.get("enhance", True), req.get("like"), req.get("tokens", False))


async def _form_query(service: SearchService, request):
    from lsb_mm.data.images import load_image_bytes

    form = await request.form()
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        raise ServiceError(422, "the form needs an 'image' file")
    try:
        img = load_image_bytes(await upload.read(), getattr(upload, "filename", None) or "the uploaded image")
    except ImageLoadError as exc:
        raise ServiceError(422, str(exc)) from None
    k = form.get("k", "10")
    if not str(k).isdigit():
        raise ServiceError(422, f"'k' must be a positive integer, got {k!r}")
    enhance = str(form.get("enhance", "true")).lower()
    if enhance not in ("true", "false"):
        raise ServiceError(422, f"'enhance' must be true or false, got {enhance!r}")
    return service.query(form.get("index"), None, img, int(k), str(form.get("role", "query")), enhance == "true")


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
