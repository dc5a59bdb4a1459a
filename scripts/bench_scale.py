"""Index factories at scale: build time, memory, QPS and Recall@10 of each FAISS factory, and of
``factory="auto"`` under a memory budget, on one vector set.

    python3 scripts/bench_scale.py [--n 1000000] [--dim 384] [--budget 200M] [--target-recall 0.9]
                                   [--factories Flat IVF4096,Flat ...] [--out bench_results]

The vectors are a seeded mixture of Gaussian clusters, L2-normalised (``--clusters``); the
queries are ``--queries`` more draws from the same mixture, none of them in the index. Recall@10
is against exact search. Each factory's ``nprobe`` / ``efSearch`` is tuned on those queries to
``--target-recall`` (the smallest value that reaches it; the largest tried when none does), and
QPS is measured at that setting, all queries in one batch. Each factory's row is written to
``<out>/scale/<factory>.json`` when it finishes and skipped when it is there (rerun to resume);
``scale.md`` is rendered from the rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np


def mixture(n: int, d: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rs = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centres[rs.integers(0, clusters, m)] + spread * rs.normal(size=(m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def measure(factory: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, target: float, budget: str) -> Dict[str, Any]:
    from lsb_mm.autoindex import recall_at, tune_search
    from lsb_mm.index import Index

    t0 = time.perf_counter()
    if factory == "auto":
        ix = Index.build(x, factory="auto", max_memory=budget, device="cpu", target_recall=None)
    else:
        ix = Index.build(x, factory=factory, device="cpu")
    build = time.perf_counter() - t0
    raw = ix._index
    memory = ix.memory_bytes()
    tuning = tune_search(raw, q, truth, target)
    t1 = time.perf_counter()
    found = raw.search(q, 10)[1]
    seconds = time.perf_counter() - t1
    return {"factory": factory, "built": ix.factory, "n": len(x), "dim": x.shape[1], "build_seconds": round(build, 1),
            "memory_bytes": memory, "bytes_per_vector": round(memory / len(x), 1), "tuning": tuning,
            "recall_at_10": round(recall_at(found, truth), 4), "qps": round(len(q) / seconds, 1),
            "auto": ix.build_info.get("auto")}


def render(rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> List[str]:
    lines = ["# Index factories at scale", "",
             f"{settings['n']:,} vectors of dimension {settings['dim']} (a seeded mixture of {settings['clusters']} Gaussian "
             f"clusters, L2-normalised); {settings['queries']} held-out queries from the same mixture; Recall@10 against "
             f"exact search; each factory's search parameter tuned to Recall@10 >= {settings['target_recall']} on those "
             f"queries; QPS with all queries in one batch on {settings['threads']} threads. `auto` ran with the budget "
             f"{settings['budget']}.", "",
             "| factory | built as | build s | memory MiB | bytes / vector | tuned | Recall@10 | target met | QPS |",
             "|---|---|---:|---:|---:|---|---:|---|---:|"]
    for r in rows:
        t = r["tuning"]
        tuned = f"{t['param']} {t['value']}" if t["param"] else "exact"
        lines.append(f"| {r['factory']} | {r['built']} | {r['build_seconds']} | {r['memory_bytes'] / 2 ** 20:.1f} | "
                     f"{r['bytes_per_vector']} | {tuned} | {r['recall_at_10']} | {'yes' if t['met'] else 'no'} | {r['qps']} |")
    auto = next((r for r in rows if r["factory"] == "auto"), None)
    if auto is not None:
        from lsb_mm.autoindex import parse_memory

        within = auto["memory_bytes"] <= parse_memory(settings["budget"])
        lines += ["", f"- `auto` under {settings['budget']}: chose {auto['built']} ({auto['auto']['reason']}); it holds "
                      f"{auto['memory_bytes'] / 2 ** 20:.1f} MiB ({'within' if within else 'over'} the budget) and reaches "
                      f"Recall@10 {auto['recall_at_10']} ({'meets' if auto['tuning']['met'] else 'misses'} the target "
                      f"{settings['target_recall']})."]
    return lines


def main(argv=None) -> int:
    import faiss

    from lsb_mm.autoindex import exact_neighbours
    from lsb_mm.benchmarking import save_row, saved_row, write_benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--budget", default="200M", help="memory budget of the auto row (default: %(default)s)")
    ap.add_argument("--target-recall", type=float, default=0.9)
    ap.add_argument("--factories", nargs="+",
                    default=["Flat", "IVF4096,Flat", "IVF4096,SQ8", "IVF4096,PQ96x4fsr", "IVF4096,PQ48x4fsr", "auto"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    if args.n < 1000 or args.dim < 2 or args.queries < 1:
        ap.error("--n >= 1000, --dim >= 2 and --queries >= 1 please")
    rows_dir = os.path.join(args.out, "scale")
    os.makedirs(rows_dir, exist_ok=True)
    settings = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "budget": args.budget,
                "target_recall": args.target_recall, "seed": args.seed, "threads": faiss.omp_get_max_threads()}
    x = q = truth = None
    rows = []
    for factory in args.factories:
        path = os.path.join(rows_dir, factory.replace(",", "_") + ".json")
        row = saved_row(path, settings)
        if row is not None:
            rows.append(row)
            print(f"{factory}: done earlier ({path})")
            continue
        if x is None:
            t = time.perf_counter()
            x = mixture(args.n, args.dim, args.clusters, args.seed)
            q = mixture(args.queries, args.dim, args.clusters, args.seed + 1)
            truth = exact_neighbours(x, q, 10)
            print(f"data and exact top-10 in {time.perf_counter() - t:.0f} s", flush=True)
        row = {**measure(factory, x, q, truth, args.target_recall, args.budget), "settings": settings}
        save_row(path, row)
        rows.append(row)
        print(f"{factory}: built in {row['build_seconds']} s, {row['bytes_per_vector']} B/vector, Recall@10 "
              f"{row['recall_at_10']}, {row['qps']} QPS", flush=True)
    write_benchmark(args.out, "scale", {"settings": settings, "results": rows}, render(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
