"""``lsb-mm search`` and ``lsb-mm explain``: one query against an index, and what drives its modulation."""
from __future__ import annotations

import argparse
import json
import time

from lsb_mm.errors import InputError
from lsb_mm.cli.common import (_add_model_args, _fusion_arg, _load)


def cmd_search(args) -> int:
    t = [time.perf_counter()]
    from lsb_mm.retrieval.index import Index

    if args.hybrid is not None and args.text is None:
        raise InputError("--hybrid fuses BM25 over the query's text: give --text")
    index = Index.load(args.index if len(args.index) > 1 else args.index[0])
    if args.hybrid is not None:
        index.check_hybrid()  # before the model loads
    t.append(time.perf_counter())
    model = _load(args)
    t.append(time.perf_counter())
    if args.text is not None:
        q = model.encode_query([args.text])
    else:
        q = model.encode_query([args.image], modality="image")
    t.append(time.perf_counter())
    if args.hybrid is None:
        scores, ids = index.search(q, k=args.k, fingerprint=model.fingerprint())
    else:
        scores, ids = index.search_hybrid(q, [args.text], k=args.k, fusion=args.hybrid, fingerprint=model.fingerprint())
    t.append(time.perf_counter())
    seconds = {k: round(b - a, 4) for k, a, b in zip(("index_load", "model_load", "encode", "search"), t, t[1:])}
    where = {i: n for n, i in enumerate(index.ids)}
    hits = []
    for rank, (s, i) in enumerate(zip(scores[0], ids[0]), 1):
        if i is None:
            break
        hit = {"rank": rank, "score": round(float(s), 6), "id": i}
        if index.metadata is not None:
            hit.update(index.metadata[where[i]])
        hits.append(hit)
    if args.json:
        print(json.dumps({"query": args.text if args.text is not None else args.image, "hits": hits, "seconds": seconds},
                         ensure_ascii=False))
    else:
        print(f"{'rank':>4}  {'score':>8}  id")
        for h in hits:
            extra = h.get("caption") or h.get("text", "")
            print(f"{h['rank']:>4}  {h['score']:>8.4f}  {h['id']}" + (f"  | {extra[:80]}" if extra else ""))
    return 0


def cmd_explain(args) -> int:
    from lsb_mm.models.explain import explain

    model = _load(args)
    res = explain(model, text=args.text, image=args.image, top=args.top, dims=args.dims)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
        return 0
    m = res["modulation"]
    print(f"query: {res['query']!r}   head: {res['head']}   modulation: max/min {m['max_over_min']:.3f}, "
          f"entropy {m['entropy']:.4f} of uniform")
    print(f"{'rank':>4}  {'w':>8}  {'contribution':>12}  {'raises dims':<16}  token")
    for t in res["tokens"]:
        print(f"{t['rank']:>4}  {t['w']:>8.4f}  {t['contribution']:>12.5f}  {str(t['raises_dims']):<16}  {t['token']}")
    print("most amplified dims (share of a x d): " + ", ".join(f"{x['dim']} ({x['gain']:.2f})" for x in res["amplified_dims"]))
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
    se = sub.add_parser("search", help="search an index with a text or an image query",
                        description="Encode one query (role=query) and print the top-k as a table or JSON. The model "
                                    "must be the one that built the index (its fingerprint is checked).")
    _add_model_args(se)
    se.add_argument("--index", nargs="+", required=True, help="index folder(s); several shards are searched together")
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query")
    q.add_argument("--image", help="an image query (file path)")
    se.add_argument("-k", type=int, default=10, help="results to return (default: 10)")
    se.add_argument("--hybrid", type=_fusion_arg, default=None, metavar="rrf|W",
                    help="fuse with the index's BM25 side (built with index --bm25): rrf (reciprocal-rank fusion) or "
                         "a dense weight W in [0, 1] (weighted min-max scores; choose W with eval --fusion-val)")
    se.add_argument("--json", action="store_true", help="print JSON instead of a table (with the seconds spent loading the index and the model, encoding and searching)")
    se.set_defaults(func=cmd_search)
    xp = sub.add_parser("explain", help="which tokens (or visual words) drive a query's modulation",
                        description="List the query's tokens (SLR/LLR; for CLR the vocabulary entries) whose columns "
                                    "of W_p contribute most to the modulation a = softmax(W_p w + b_p), the dimensions "
                                    "each one raises, and how far a is from uniform.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  lsb-mm explain --model runs/slr/final --text \"open a tcp socket\"\n"
                               "  lsb-mm explain --model runs/img/final --image crop.png --top 5 --json")
    _add_model_args(xp)
    xq = xp.add_mutually_exclusive_group(required=True)
    xq.add_argument("--text", help="a text query")
    xq.add_argument("--image", help="an image query (file path)")
    xp.add_argument("--top", type=int, default=10, help="tokens to list (default: 10)")
    xp.add_argument("--dims", type=int, default=3, help="dimensions per token (default: 3)")
    xp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    xp.set_defaults(func=cmd_explain)
