"""Image search from the command line: index a folder of images, query it by text or by an
example image, and write an HTML gallery of the results.

    python3 scripts/image_search.py index --model M --images photos/ --output photos.index
    python3 scripts/image_search.py query --model M --index photos.index \\
        --text "a red bicycle" --image examples/bike.jpg -k 8 --html results.html

Captions come from ``x.txt`` sidecars of the images (first line). The gallery is one HTML file
with the thumbnails inlined; every caption and file name in it is HTML-escaped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm.errors import LSBError  # noqa: E402
from lsb_mm.evaluation.gallery import write_gallery  # noqa: E402


def build(args) -> dict:
    model = lsb_mm.create_model(args.model, head=args.head)
    index = lsb_mm.build_index(model, args.images, args.output, kind="images", factory=args.factory,
                               batch_size=args.batch_size, num_workers=args.workers)
    return {"index": args.output, "count": len(index)}


def query(args) -> dict:
    index = lsb_mm.Index.load(args.index)
    model = lsb_mm.create_model(args.model, head=args.head)
    queries = [("text", t) for t in args.text or []] + [("image", p) for p in args.image or []]
    if not queries:
        raise lsb_mm.InputError("give at least one --text or --image query")
    where = {i: n for n, i in enumerate(index.ids)}
    results = []
    for kind, q in queries:
        e = model.encode_query([q], modality=kind)
        scores, ids = index.search(e, k=args.k, fingerprint=model.fingerprint())
        hits = [{"rank": r, "score": float(s), "id": i, **(index.metadata[where[i]] if index.metadata else {})}
                for r, (s, i) in enumerate(zip(scores[0], ids[0]), 1) if i is not None]
        results.append({"query": q if kind == "text" else f"image {os.path.basename(q)}",
                        "query_image": q if kind == "image" else None, "hits": hits})
    if args.html:
        write_gallery(args.html, args.title, results)
    return {"html": args.html, "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("index", help="index a folder of images")
    b.add_argument("--images", required=True)
    b.add_argument("--output", required=True)
    b.add_argument("--factory", default="Flat")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--workers", type=int, default=2)
    q = sub.add_parser("query", help="search by text and/or example images; write an HTML gallery")
    q.add_argument("--index", required=True)
    q.add_argument("--text", action="append", help="a text query (repeatable)")
    q.add_argument("--image", action="append", help="an example image (repeatable)")
    q.add_argument("-k", type=int, default=8)
    q.add_argument("--html", default=None, help="write the gallery here")
    q.add_argument("--title", default="lsb-mm image search")
    for p in (b, q):
        p.add_argument("--model", required=True, help="saved lsb-mm folder or encoder name")
        p.add_argument("--head", default="clr", help="head of a model built from an encoder name")
    args = ap.parse_args(argv)
    try:
        out = build(args) if args.cmd == "index" else query(args)
    except LSBError as exc:
        print(f"image_search: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out if args.cmd == "index" else {"html": out["html"], "queries": len(out["results"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
