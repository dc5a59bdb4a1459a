"""``lsb-mm serve``: the HTTP search service."""
from __future__ import annotations

import json

from lsb_mm.errors import InputError
from lsb_mm.cli.common import (_add_model_args, _load)


def cmd_serve(args) -> int:
    indexes = {}
    for spec in args.index:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--index {spec!r}: expected NAME=FOLDER")
        if name in indexes:
            raise InputError(f"--index {name} given twice")
        indexes[name] = folder
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise InputError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    if args.max_batch < 1 or not 0 <= args.batch_wait_ms <= 1000:
        raise InputError(f"--max-batch must be >= 1 and --batch-wait-ms in 0..1000, got {args.max_batch}, {args.batch_wait_ms}")
    from lsb_mm.errors import require_extra

    require_extra("serve", "lsb-mm serve", "fastapi", "uvicorn")
    from lsb_mm.serving.app import create_app, serve_forever
    from lsb_mm.serving.service import SearchService
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    service = SearchService(_load(args), indexes)
    app = create_app(service, api_key=args.api_key, max_body=int(args.max_body_mb * (1 << 20)), cors_origins=args.cors_origin,
                     batching=not args.no_batching, max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms)
    print(json.dumps({"serving": sorted(indexes), "url": f"http://{args.host}:{args.port}/"}), flush=True)
    if serve_forever(app, args.host, args.port) != 0:
        raise InputError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this machine?)")
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
    sv = sub.add_parser("serve", help="serve index folders over HTTP (search API; FastAPI docs at /docs)",
                        description="Start a search service on one model and named index folders: a search page "
                                    "at /, POST /search (JSON or an image upload), GET /items/NAME/ID[/thumbnail], "
                                    "/info, /health, POST /admin/reload (re-read a rebuilt folder; a failed reload "
                                    "keeps the old index). Concurrent queries are batched into one encode call. "
                                    "Binds 127.0.0.1 unless --host says otherwise.",
                        epilog="example: lsb-mm serve --model runs/demo/model-slr --index stamps=runs/demo/index-slr "
                               "(then open http://127.0.0.1:8000/)")
    _add_model_args(sv)
    sv.add_argument("--index", action="append", required=True, metavar="NAME=FOLDER",
                    help="an index folder served as NAME (repeat for several)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require this key in the X-API-Key header (/, /health and /docs stay open)")
    sv.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, MiB (default: %(default)s)")
    sv.add_argument("--cors-origin", action="append", default=None, help="allow browsers on this origin (default: none)")
    sv.add_argument("--max-batch", type=int, default=32, help="most queries encoded together (default: %(default)s)")
    sv.add_argument("--batch-wait-ms", type=float, default=2.0,
                    help="how long a query waits for others to join its batch (default: %(default)s)")
    sv.add_argument("--no-batching", action="store_true", help="encode every query alone (to compare)")
    sv.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for encoding (default: torch's choice; one fewer than the cores leaves one "
                         "for HTTP, which pays off on small machines)")
    sv.set_defaults(func=cmd_serve)
