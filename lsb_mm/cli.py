"""The ``lsb-mm`` command line. User mistakes print one line on stderr and exit 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional

import numpy as np

from . import __version__
from .errors import InputError, LSBError

log = logging.getLogger("lsb_mm")

EPILOG = """examples:
  lsb-mm encode --model open_clip:lsb-tiny-test --head slr --texts queries.txt --output q.npy
  lsb-mm encode --model runs/my-model --images photos/ --role document --output docs.npy
  lsb-mm encode --model hf:/path/to/all-MiniLM-L6-v2 --pooling mean --texts passages.txt --output p.npy
"""


def _read_texts(path: str) -> List[str]:
    """One text per line (.txt) or a JSONL file whose lines are strings or objects with a 'text' field."""
    if not os.path.isfile(path):
        raise InputError(f"--texts {path}: no such file")
    texts: List[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if path.endswith(".jsonl"):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
                text = obj.get("text") if isinstance(obj, dict) else obj
                if not isinstance(text, str):
                    raise InputError(f"{path}:{n}: expected a string or an object with a string 'text' field")
                texts.append(text)
            else:
                if not line.strip():
                    raise InputError(f"{path}:{n}: empty line (one text per line is expected)")
                texts.append(line)
    if not texts:
        raise InputError(f"--texts {path}: the file holds no text")
    return texts


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a saved lsb-mm folder, or an encoder name: open_clip:<config>, open_clip:local-dir:/path, "
                        "timm:<name>, hf:<folder>")
    p.add_argument("--head", default="clr", choices=["clr", "slr", "llr", "none"],
                   help="head for a new model built from an encoder name (ignored for saved folders; default: clr)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    p.add_argument("--pooling", default=None, choices=["auto", "cls", "mean", "max"], help="pooling of hf: text encoders")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _load(args):
    import torch

    from .factory import create_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opts = {}
    if args.pooling:
        opts["pooling"] = args.pooling
    return create_model(args.model, head=args.head, pretrained=args.pretrained, device=device, **opts)


def cmd_encode(args) -> int:
    from .images import list_image_files

    model = _load(args)
    t0 = time.perf_counter()
    if args.texts:
        items = _read_texts(args.texts)
        emb = model.encode_text(items, role=args.role, batch_size=args.batch_size,
                                show_progress_bar=not args.quiet, enhance=not args.no_enhance)
        rows = [{"row": i, "text": t} for i, t in enumerate(items)]
    else:
        items = list_image_files(args.images)
        if not items:
            raise InputError(f"--images {args.images}: no image files found")
        emb = model.encode_image(items, role=args.role, batch_size=args.batch_size, num_workers=args.workers,
                                 show_progress_bar=not args.quiet, enhance=not args.no_enhance)
        rows = [{"row": i, "path": p} for i, p in enumerate(items)]
    dt = time.perf_counter() - t0
    out = args.output
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npy"
    np.save(tmp, emb.astype(np.float32))
    os.replace(tmp, out)
    rows_path = os.path.splitext(out)[0] + ".rows.jsonl"
    with open(rows_path + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(rows_path + ".tmp", rows_path)
    summary = {"output": out, "rows": rows_path, "count": int(emb.shape[0]), "dim": int(emb.shape[1]),
               "seconds": round(dt, 3), "per_second": round(emb.shape[0] / max(dt, 1e-9), 1),
               "model": args.model, "fingerprint": model.fingerprint(), "role": args.role, "enhance": not args.no_enhance}
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsb-mm", description="LexSemBridge retrieval for text and images: token-aware SLR/LLR/CLR heads "
                                   "over open_clip, timm and Hugging Face encoders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"lsb-mm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    enc.add_argument("--role", default="query", choices=["query", "document"],
                     help="query applies the query-side head; document the document side (plain by default)")
    enc.add_argument("--no-enhance", action="store_true", help="plain backbone embeddings, no head")
    enc.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
    enc.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default: 0)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=cmd_encode)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be >= 1")
    try:
        return args.func(args)
    except LSBError as exc:
        print(f"lsb-mm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
