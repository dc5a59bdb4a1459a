"""``lsb-mm encode``: texts or a folder of images to a ``.npy`` matrix."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from lsb_mm.errors import InputError
from lsb_mm.files import atomic_write, same_file, write_text
from lsb_mm.cli.common import (EPILOG, _add_model_args, _load, _read_texts)


def cmd_encode(args) -> int:
    from lsb_mm.data.images import list_image_files

    if os.path.isdir(args.output):
        raise InputError(f"--output {args.output} is a folder; give the path of the .npy file to write")
    rows_path = os.path.splitext(args.output)[0] + ".rows.jsonl"
    for written in (args.output, rows_path):
        if args.texts and same_file(written, args.texts):
            raise InputError(f"--output {args.output} would write {written}, which is the --texts input; choose "
                             "another output")
    model = _load(args)
    t0 = time.perf_counter()
    if args.texts:
        kind, items = "text", _read_texts(args.texts)
        rows = [{"row": i, "text": t} for i, t in enumerate(items)]
    else:
        kind, items = "image", list_image_files(args.images)
        if not items:
            raise InputError(f"--images {args.images}: no image files found")
        rows = [{"row": i, "path": p} for i, p in enumerate(items)]
    emb = model.encode(items, kind, args.role, batch_size=args.batch_size, num_workers=args.workers,
                       show_progress_bar=not args.quiet, enhance=not args.no_enhance)
    dt = time.perf_counter() - t0
    out = args.output
    with atomic_write(out, "wb") as f:
        np.save(f, emb.astype(np.float32))
    write_text(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"output": out, "rows": rows_path, "count": int(emb.shape[0]), "dim": int(emb.shape[1]),
               "seconds": round(dt, 3), "per_second": round(emb.shape[0] / max(dt, 1e-9), 1),
               "model": args.model, "fingerprint": model.fingerprint(), "role": args.role, "enhance": not args.no_enhance}
    print(json.dumps(summary))
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
    enc = sub.add_parser("encode", help="encode texts or a folder of images to a .npy matrix",
                         description="Encode texts (one per line, or JSONL with a 'text' field) or every image under "
                                     "a folder into float32, L2-normalised embeddings saved as .npy, plus a "
                                     "<output>.rows.jsonl file that maps rows to inputs. Prints a JSON summary.",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _add_model_args(enc)
    src = enc.add_mutually_exclusive_group(required=True)
    src.add_argument("--texts", help="a .txt file (one text per line) or .jsonl file")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    enc.add_argument("--output", required=True, help="where to write the embeddings (.npy)")
    enc.add_argument("--role", default="document", choices=["query", "document"],
                     help="document (default): what an index holds, plain unless the model fuses documents; "
                          "query: with the query-side head (for the queries you search with)")
    enc.add_argument("--no-enhance", action="store_true", help="plain backbone embeddings, no head")
    enc.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
    enc.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default: 0)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=cmd_encode)
