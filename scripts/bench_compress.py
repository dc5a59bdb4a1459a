"""Compressed embeddings: Recall@10, memory and latency of scalar (SQ), product (PQ) and binary
codes against the float32 vectors, on real embeddings.

    python3 scripts/bench_compress.py [--sets fashion-mnist manpages kde-1m] [--queries 1000]
                                      [--factories Flat SQ8 BFlat,Rescore4 ...] [--work runs/compress]
                                      [--out bench_results]

Sets (embeddings from ``lsb-mm index --engine local``, whose resumable shards stay under ``--work``):

- ``fashion-mnist``: all 70,000 Fashion-MNIST images (train + test, Debian ``dataset-fashion-mnist``),
  written to a Parquet file of PNG bytes and encoded by the packaged EfficientNet-Lite0 (ImageNet
  weights, no head, 112 px as in the image reproductions): dimension 1280.
- ``manpages``: the bodies of the Debian man pages cut into 64-word passages, encoded by the
  packaged all-MiniLM-L6-v2: dimension 384.
- ``kde-1m``: 1,000,000 vectors drawn around the man-page passages (``--kde-n``): a random
  passage's embedding plus Gaussian noise with the passages' own covariance times ``--kde-scale``,
  L2-normalised. Synthetic, but with the real embeddings' spectrum and neighbourhoods, unlike
  isotropic noise (``bench_scale.py``'s mixture), which no code can compress.

``--queries`` vectors of each set are held out of the index and searched; Recall@10 is against
exact inner-product search over the float32 vectors. Every factory scans all codes (no coarse
quantiser), so what is lost is the codes' alone: ``Flat``, ``SQfp16``, ``SQ8``, ``SQ4``,
``PQ{d/8}`` (d/8 bytes, as many as the binary codes), ``PQ{d/16}``, ``BFlat`` (Hamming) and
``BFlat,Rescore{r}`` (r x 10 Hamming candidates reordered by the float query). Latency is the
median of single-query searches; QPS is all queries in one batch. Each row is written to
``<out>/compress/<set>/<factory>.json`` when it finishes and skipped when it is there with the same
settings (rerun to resume); ``compress.md`` is rendered from the rows.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

SETS = ("fashion-mnist", "manpages", "kde-1m")
DEFAULT_FACTORIES = ["Flat", "SQfp16", "SQ8", "SQ4", "PQ/8", "PQ/16", "BFlat", "BFlat,Rescore4", "BFlat,Rescore16"]
PASSAGE_WORDS = 64


def fashion_parquet(path: str) -> None:
    """All 70,000 Fashion-MNIST images as PNG bytes, with ids ``train/00000`` ... and the class as caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from lsb_mm_experiments.datasets import FASHION_CLASSES, load_fashion_mnist

    ids, images, captions = [], [], []
    for split in ("train", "test"):
        x, y = load_fashion_mnist(split)
        for i, (img, label) in enumerate(zip(x, y)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            ids.append(f"{split}/{i:05d}")
            images.append(buf.getvalue())
            captions.append(FASHION_CLASSES[int(label)])
    tmp = path + ".tmp"
    pq.write_table(pa.table({"_id": ids, "image": images, "caption": captions}), tmp, row_group_size=8192)
    os.replace(tmp, path)


def manpage_corpus(path: str, limit: int = 0) -> None:
    """The man pages' bodies in passages of PASSAGE_WORDS words, as a JSONL corpus (``_id``, ``text``)."""
    from lsb_mm_experiments.datasets import load_manpages

    rows = []
    for page in load_manpages():
        words = page.body.split()
        for n, s in enumerate(range(0, len(words), PASSAGE_WORDS)):
            rows.append({"_id": f"{os.path.basename(page.path)}#{n}", "text": " ".join(words[s:s + PASSAGE_WORDS])})
    if limit:
        rows = rows[:limit]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def encode(name: str, work: str, limit: int) -> np.ndarray:
    """The set's embeddings, encoded (or resumed) by ``lsb-mm index --engine local``."""
    from lsb_mm.cli import main as cli
    from lsb_mm.scale.shards import EmbeddingShards

    emb = os.path.join(work, f"{name}.embeddings")
    if name == "fashion-mnist":
        src = os.path.join(work, "fashion-mnist.parquet")
        if not os.path.isfile(src):
            fashion_parquet(src)
        argv = ["--model", "effnet-lite0", "--head", "none", "--model-option", "img_size=112", "--parquet", src]
    else:
        src = os.path.join(work, f"manpages-{limit or 'all'}.jsonl")
        if not os.path.isfile(src):
            manpage_corpus(src, limit)
        argv = ["--model", "minilm", "--head", "none", "--corpus", src]
        emb = os.path.join(work, f"manpages-{limit or 'all'}.embeddings")
    if os.path.isfile(os.path.join(emb, "plan.json")) and not EmbeddingShards.open(emb).todo():
        return EmbeddingShards.open(emb).rows()[:]  # encoded earlier, every shard finished
    t = time.perf_counter()
    rc = cli(["index", *argv, "--engine", "local", "--embeddings", emb, "--output", emb + ".index", "-q"])
    if rc != 0:
        raise SystemExit(f"encoding {name} failed (lsb-mm index exit {rc})")
    print(f"{name}: embeddings ready in {time.perf_counter() - t:.0f} s ({emb})", flush=True)
    return EmbeddingShards.open(emb).rows()[:]


def kde(source: np.ndarray, n: int, scale: float, seed: int) -> np.ndarray:
    """``n`` draws of source[i] + scale * N(0, cov(source)), L2-normalised, in blocks."""
    rs = np.random.default_rng(seed)
    cov = np.cov(source, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    basis = (vecs * np.sqrt(np.maximum(vals, 0))).T.astype(np.float32)  # z @ basis ~ N(0, cov)
    out = np.empty((n, source.shape[1]), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = source[rs.integers(0, len(source), m)] + scale * (rs.normal(size=(m, source.shape[1])).astype(np.float32) @ basis)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def factory_name(spec: str, d: int) -> str:
    """``PQ/8`` -> ``PQ{d/8}`` (the largest divisor of d not above d/8, so PQ splits d evenly)."""
    if spec.startswith("PQ/"):
        m = max(1, d // int(spec[3:]))
        while d % m:
            m -= 1
        return f"PQ{m}"
    return spec


def measure(factory: str, base: np.ndarray, q: np.ndarray, truth: np.ndarray, singles: int) -> Dict[str, Any]:
    from lsb_mm.retrieval.autoindex import recall_at
    from lsb_mm.retrieval.index import Index

    t0 = time.perf_counter()
    ix = Index.build(base, factory=factory, device="cpu")
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    labels = ix._index.search(q, 10)[1]
    batch = time.perf_counter() - t1
    times = []
    for row in q[:singles]:
        t = time.perf_counter()
        ix._index.search(row[None], 10)
        times.append(time.perf_counter() - t)
    memory = ix.memory_bytes()
    return {"factory": factory, "n": len(base), "dim": base.shape[1], "build_seconds": round(build, 1),
            "memory_bytes": memory, "bytes_per_vector": round(memory / len(base), 1),
            "compression": round(4 * base.shape[1] * len(base) / memory, 1),
            "recall_at_10": round(recall_at(labels, truth), 4), "qps": round(len(q) / batch, 1),
            "latency_ms": round(1000 * float(np.median(times)), 3)}


def render(sets: Dict[str, Dict[str, Any]], settings: Dict[str, Any]) -> List[str]:
    lines = ["# Compressed embeddings: recall, memory and latency", "",
             f"Per set: {settings['queries']} vectors held out as queries; Recall@10 against exact inner-product search "
             f"over the float32 vectors; every factory scans all codes (no coarse quantiser), so the loss is the codes' "
             f"alone. Latency: median of {settings['singles']} single-query searches; QPS: all queries in one batch; "
             f"{settings['threads']} threads. `kde-1m`: {settings['kde_n']:,} draws around the man-page passages' "
             f"embeddings (noise with their covariance x {settings['kde_scale']}), synthetic but with the real spectrum.", ""]
    for name, info in sets.items():
        lines += [f"## {name}: {info['n']:,} vectors of dimension {info['dim']} ({info['what']})", "",
                  "| factory | bytes / vector | x smaller | Recall@10 | latency ms | QPS | build s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in info["rows"]:
            lines.append(f"| {r['factory']} | {r['bytes_per_vector']} | {r['compression']} | {r['recall_at_10']} | "
                         f"{r['latency_ms']} | {r['qps']} | {r['build_seconds']} |")
        lines.append("")
    return lines


WHAT = {"fashion-mnist": "Fashion-MNIST train + test, packaged EfficientNet-Lite0 at 112 px, no head",
        "manpages": f"man-page passages of {PASSAGE_WORDS} words, packaged all-MiniLM-L6-v2, no head",
        "kde-1m": "synthetic draws around the man-page passages' embeddings"}


def main(argv=None) -> int:
    import faiss

    from lsb_mm.retrieval.autoindex import exact_neighbours
    from lsb_mm_experiments.benchmarking import save_row, saved_row, write_benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES,
                    help="FAISS factories; PQ/8 means PQ with d/8 sub-quantisers (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=200, help="single-query searches timed for the latency")
    ap.add_argument("--kde-n", type=int, default=1_000_000)
    ap.add_argument("--kde-scale", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N man-page passages (0: all; for tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.path.join("runs", "compress"))
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    if args.queries < 10 or args.singles < 1 or args.kde_n < 1000 or args.kde_scale <= 0:
        ap.error("--queries >= 10, --singles >= 1, --kde-n >= 1000 and --kde-scale > 0 please")
    os.makedirs(args.work, exist_ok=True)
    settings = {"queries": args.queries, "singles": min(args.singles, args.queries), "kde_n": args.kde_n,
                "kde_scale": args.kde_scale, "limit": args.limit, "seed": args.seed, "threads": faiss.omp_get_max_threads()}
    sets: Dict[str, Dict[str, Any]] = {}
    cache: Dict[str, np.ndarray] = {}
    for name in args.sets:
        rows_dir = os.path.join(args.out, "compress", name)
        os.makedirs(rows_dir, exist_ok=True)
        data = None
        rows = []
        for spec in args.factories:
            path = os.path.join(rows_dir, spec.replace(",", "_").replace("/", "-") + ".json")
            row = saved_row(path, settings)
            if row is not None:
                rows.append(row)
                print(f"{name} {row['factory']}: done earlier ({path})")
                continue
            if data is None:
                if name == "kde-1m":
                    if "manpages" not in cache:
                        cache["manpages"] = encode("manpages", args.work, args.limit)
                    x = kde(cache["manpages"], args.kde_n, args.kde_scale, args.seed)
                else:
                    if name not in cache:
                        cache[name] = encode(name, args.work, args.limit)
                    x = cache[name]
                rs = np.random.default_rng(args.seed)
                held = np.zeros(len(x), dtype=bool)
                held[rs.choice(len(x), size=args.queries, replace=False)] = True
                data = (np.ascontiguousarray(x[~held]), np.ascontiguousarray(x[held]))
                t = time.perf_counter()
                truth = exact_neighbours(data[0], data[1], 10)
                print(f"{name}: {len(data[0])} vectors of dimension {x.shape[1]}, exact top-10 in "
                      f"{time.perf_counter() - t:.0f} s", flush=True)
            factory = factory_name(spec, data[0].shape[1])
            row = {**measure(factory, data[0], data[1], truth, settings["singles"]), "spec": spec, "settings": settings}
            save_row(path, row)
            rows.append(row)
            print(f"{name} {factory}: {row['bytes_per_vector']} B/vector, Recall@10 {row['recall_at_10']}, "
                  f"{row['latency_ms']} ms, {row['qps']} QPS", flush=True)
        if rows:
            sets[name] = {"n": rows[0]["n"], "dim": rows[0]["dim"], "what": WHAT[name], "rows": rows}
    write_benchmark(args.out, "compress", {"settings": settings, "sets": sets}, render(sets, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
