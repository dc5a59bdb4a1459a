"""Search speed: lsb_mm.Index vs raw FAISS vs numpy brute force vs the reference's per-pair loop.

    python3 scripts/bench_search.py [--n 1000000] [--dim 384] [--queries 1000] [--out bench_results]

Exact (Flat, inner product) top-10 over random unit vectors; each ratio measured in one run on
the same data. The per-pair Python loop (one dot product per (query, passage) pair, as the
reference evaluation ranks) is timed on a slice where it finishes (``--loop-n`` x ``--loop-queries``),
against Index on the same slice.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def numpy_topk(x, q, k, batch=100):
    out = []
    for s in range(0, len(q), batch):
        sc = q[s:s + batch] @ x.T
        part = np.argpartition(-sc, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, 1), axis=1)
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def per_pair_loop(x, q, k):
    """The reference's ranking: a Python loop over every (query, passage) pair."""
    out = []
    for qi in q:
        scores = [float(np.dot(qi, p)) for p in x]
        out.append(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])
    return np.array(out)


def sig(seconds: float) -> float:
    """Seconds to 4 significant digits (a fast run does not round to 0)."""
    return float(f"{seconds:.4g}")


def main(argv=None) -> int:
    import faiss

    from lsb_mm_experiments.benchmarking import machine_info, write_benchmark
    from lsb_mm.retrieval.index import Index

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--loop-n", type=int, default=100_000)
    ap.add_argument("--loop-queries", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the Index / raw FAISS pair")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    x, q = unit(args.n, args.dim, 0), unit(args.queries, args.dim, 1)
    ids = [str(i) for i in range(args.n)]
    t_build, index = timed(lambda: Index.build(x, ids=ids, factory="Flat", device="cpu"))
    raw = faiss.IndexFlatIP(args.dim)
    t_raw_build, _ = timed(lambda: raw.add(x))
    rows = {}
    index.search(q[:2], args.k)  # first call builds the id lookup once
    raw_times, idx_times = [], []
    for _ in range(args.repeats):  # interleaved, median
        t, (_, raw_i) = timed(lambda: raw.search(q, args.k))
        raw_times.append(t)
        t, (_, idx_ids) = timed(lambda: index.search(q, args.k))
        idx_times.append(t)
    t_raw, t_idx = float(np.median(raw_times)), float(np.median(idx_times))
    t_np, np_i = timed(lambda: numpy_topk(x, q, args.k))
    same = float(np.mean(idx_ids.astype(np.int64) == raw_i))
    rows["full"] = {"n": args.n, "dim": args.dim, "queries": args.queries, "index_build_s": round(t_build, 2),
                    "raw_add_s": round(t_raw_build, 2), "index_search_s": sig(t_idx), "raw_faiss_search_s": sig(t_raw),
                    "numpy_search_s": sig(t_np), "index_vs_raw": round(t_idx / t_raw, 3), "numpy_vs_raw": round(t_np / t_raw, 2),
                    "numpy_vs_index": round(t_np / t_idx, 2), "same_ids_as_raw": same,
                    "numpy_same_ids": float(np.mean(np_i == raw_i))}
    xs, qs = x[: args.loop_n], q[: args.loop_queries]
    small = Index.build(xs, factory="Flat", device="cpu")
    t_small, (_, small_ids) = timed(lambda: small.search(qs, args.k))
    t_loop, loop_i = timed(lambda: per_pair_loop(xs, qs, args.k))
    rows["loop"] = {"n": args.loop_n, "queries": args.loop_queries, "index_search_s": sig(t_small),
                    "per_pair_loop_s": round(t_loop, 2), "loop_vs_index": round(t_loop / t_small, 1),
                    "same_ids": float(np.mean(small_ids.astype(np.int64) == loop_i))}
    machine = machine_info()
    r, l = rows["full"], rows["loop"]
    lines = [f"Exact top-{args.k} search on CPU ({machine['cores']} cores, faiss {machine['faiss']}), random unit vectors.", "",
             f"{r['n']:,} x {r['dim']} corpus, {r['queries']:,} queries (Index and raw FAISS: median of {args.repeats} interleaved runs):", "",
             "| method | seconds | ratio |", "|---|---:|---:|",
             f"| raw FAISS IndexFlatIP | {r['raw_faiss_search_s']} | 1.00 |",
             f"| lsb_mm.Index (Flat) | {r['index_search_s']} | {r['index_vs_raw']:.2f} |",
             f"| numpy brute force (batched matmul + argpartition) | {r['numpy_search_s']} | {r['numpy_vs_raw']:.2f} |",
             "", f"Per-pair Python loop (the reference's ranking) on {l['n']:,} x {l['queries']} queries:", "",
             "| method | seconds | ratio |", "|---|---:|---:|",
             f"| lsb_mm.Index (Flat) | {l['index_search_s']} | 1 |",
             f"| per-pair Python loop | {l['per_pair_loop_s']} | {l['loop_vs_index']:,} |"]
    write_benchmark(args.out, "search", rows, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
