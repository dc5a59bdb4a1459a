"""Scale: the index factories on 1M vectors, and the encoding engines on one corpus.

    python3 scripts/bench_scale.py [--parts index encode] [--n 1000000] [--dim 384] [--budget 200M]
                                   [--target-recall 0.9] [--factories Flat IVF4096,Flat ... auto auto@512M]
                                   [--encode-runs memory:1 memory:2 local:1 ray:1 ray:2] [--encode-docs 2048]
                                   [--out bench_results]

**index**: build time, memory, QPS and Recall@10 of each FAISS factory, and of ``factory="auto"``
under a memory budget, on one vector set.

The vectors are a seeded mixture of Gaussian clusters, L2-normalised (``--clusters``); the
queries are ``--queries`` more draws from the same mixture, none of them in the index. Recall@10
is against exact search. Each factory's ``nprobe`` / ``efSearch`` is tuned on those queries to
``--target-recall`` (the smallest value that reaches it; the largest tried when none does), and
QPS is measured at that setting, all queries in one batch. Each factory's row is written to
``<out>/scale/<factory>.json`` when it finishes and skipped when it is there (rerun to resume);
``scale.md`` is rendered from the rows.

**encode**: ``lsb-mm index`` over the same corpus (``--encode-docs`` man-page passages of 64 words,
the packaged MiniLM) with each of ``--encode-runs``, ``ENGINE:N``: ``memory:N`` and ``local:N`` are
one process with N torch threads, ``ray:N`` is N Ray CPU workers (actors of one thread each) on a
local Ray instance. All runs are measured in one invocation, one after another, so their ratios
compare like with like: items/s of the encoding itself, and the wall time of the whole command
(start-up, Ray's included). They are saved together in ``<out>/scale/encode.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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
    from lsb_mm.retrieval.autoindex import choose_factory, parse_memory, recall_at, tune_search
    from lsb_mm.retrieval.index import Index

    t0 = time.perf_counter()
    auto = None
    if factory.startswith("auto"):  # auto, or auto@512M: another budget than --budget
        budget = factory.partition("@")[2] or budget
        auto = choose_factory(len(x), x.shape[1], parse_memory(budget)).to_dict()  # what factory="auto" builds
        ix = Index.build(x, factory=auto["factory"], device="cpu")  # tuned below, as every row, not inside the build
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
            "auto": auto, **({"budget": budget} if auto else {})}


def describe(settings: Dict[str, Any]) -> str:
    if settings.get("data", "mixture") == "kde":
        return (f"{settings['n']:,} vectors of dimension {settings['dim']} drawn around the embeddings of the man-page passages "
                f"(packaged MiniLM; a passage's embedding plus Gaussian noise with their covariance x {settings['kde_scale']}, "
                "L2-normalised: bench_compress.py's kde-1m set); "
                f"{settings['queries']} held-out queries drawn the same way")
    return (f"{settings['n']:,} vectors of dimension {settings['dim']} (a seeded mixture of {settings['clusters']} Gaussian "
            f"clusters, L2-normalised); {settings['queries']} held-out queries from the same mixture")


def render(rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> List[str]:
    lines = ["# Index factories at scale", "",
             f"{describe(settings)}; Recall@10 against "
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
    from lsb_mm.retrieval.autoindex import parse_memory

    autos = [r for r in rows if r["factory"].startswith("auto")]
    if autos:
        lines.append("")
    for auto in autos:
        budget = auto.get("budget", settings["budget"])
        within = auto["memory_bytes"] <= parse_memory(budget)
        lines.append(f"- `{auto['factory']}` under {budget}: chose {auto['built']} ({auto['auto']['reason']}); it holds "
                     f"{auto['memory_bytes'] / 2 ** 20:.1f} MiB ({'within' if within else 'over'} the budget) and reaches "
                     f"Recall@10 {auto['recall_at_10']} ({'meets' if auto['tuning']['met'] else 'misses'} the target "
                     f"{settings['target_recall']}).")
    return lines


ENCODE_RUNS = ["memory:1", "memory:2", "local:1", "ray:1", "ray:2"]


def _compress():
    """scripts/bench_compress.py, whose man-page passages and kde set this benchmark shares."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_compress

    return bench_compress


def encode_run(run: str, corpus: str, work: str, batch_size: int, shard_size: int) -> dict:
    """One ``lsb-mm index`` run of ``ENGINE:N`` over ``corpus``, timed."""
    engine, _, n = run.partition(":")
    if engine not in ("memory", "local", "ray") or not n.isdigit() or int(n) < 1:
        raise SystemExit(f"--encode-runs: {run!r} is not ENGINE:N with ENGINE memory, local or ray and N >= 1")
    out = os.path.join(work, run.replace(":", "-"))
    for path in (out, out + ".embeddings"):
        shutil.rmtree(path, ignore_errors=True)
    threads = "1" if engine == "ray" else n
    argv = [sys.executable, "-m", "lsb_mm", "index", "--model", "minilm", "--corpus", corpus, "--output", out,
            "--batch-size", str(batch_size), "--shard-size", str(shard_size), "--engine", engine, "-q"]
    if engine == "ray":
        argv += ["--replicas", n]
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{run}: lsb-mm index failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    seconds = report["encode_seconds"] if engine == "memory" else report["job"]["seconds"]
    return {"run": run, "engine": engine, "workers": int(n) if engine == "ray" else 1, "threads": int(threads),
            "items": report["count"], "encode_seconds": round(seconds, 2), "items_per_s": round(report["count"] / seconds, 1),
            "wall_seconds": round(wall, 1),
            "per_worker": report["job"]["workers"] if engine != "memory" else None}


def render_encode(enc: dict) -> list:
    rows, s = enc["runs"], enc["settings"]
    base = next((r for r in rows if r["run"] == "memory:1"), rows[0])
    lines = ["", "## Encoding engines", "",
             f"`lsb-mm index` over {s['docs']} man-page passages of 64 words with the packaged MiniLM, batch {s['batch_size']}, "
             f"shards of {s['shard_size']}; runs one after another in one invocation on {s['cores']} cores. Ratios are "
             f"against `{base['run']}` (one process, one thread). *Job s* is the encoding job: for `local` and `ray` from "
             "its start, Ray's start-up and each actor's model loading included; *per worker* is each worker's own "
             "items/s while it encoded its units.", "",
             "| run | processes x threads | job s | items/s | vs " + base["run"] + " | per worker items/s | wall s | wall vs "
             + base["run"] + " |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        per = ", ".join(str(w["items_per_s"]) for w in (r.get("per_worker") or {}).values()) or "-"
        lines.append(f"| {r['run']} | {r['workers']} x {r['threads']} | {r['encode_seconds']} | {r['items_per_s']} | "
                     f"{r['items_per_s'] / base['items_per_s']:.2f} | {per} | {r['wall_seconds']} | "
                     f"{r['wall_seconds'] / base['wall_seconds']:.2f} |")
    one = next((r for r in rows if r["run"] == "ray:1"), None)
    if one is not None and one is not base:
        worker = list((one.get("per_worker") or {}).values())
        own = f"; its worker encoded at {worker[0]['items_per_s'] / base['items_per_s']:.2f}x while it ran" if worker else ""
        lines += ["", f"- Ray's overhead at 1 worker: the job ran at {one['items_per_s'] / base['items_per_s']:.2f}x the "
                      f"rate of `{base['run']}`{own}; the whole command took {one['wall_seconds'] - base['wall_seconds']:+.1f} s "
                      "of wall time more (starting Ray, its actor loading the model)."]
    return lines


def main(argv=None) -> int:
    import faiss

    from lsb_mm.retrieval.autoindex import exact_neighbours
    from lsb_mm_experiments.benchmarking import save_row, saved_row, write_benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["index", "encode"], choices=["index", "encode"],
                    help="what to measure now; the other part's saved rows are rendered as they are (default: both)")
    ap.add_argument("--data", default="mixture", choices=["mixture", "kde"],
                    help="mixture: isotropic Gaussian clusters (--dim, --clusters); kde: draws around the man-page passages' "
                         "MiniLM embeddings (d 384; see bench_compress.py), written to <out>/scale_kde.md (default: %(default)s)")
    ap.add_argument("--kde-scale", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--budget", default="200M", help="memory budget of the auto row (default: %(default)s)")
    ap.add_argument("--target-recall", type=float, default=0.9)
    ap.add_argument("--factories", nargs="+",
                    default=["Flat", "IVF4096,Flat", "IVF4096,SQ8", "IVF4096,PQ96x4fsr", "IVF4096,PQ48x4fsr", "auto", "auto@512M"],
                    help="FAISS factories, and auto (under --budget) or auto@SIZE (under SIZE) (default: %(default)s)")
    ap.add_argument("--encode-runs", nargs="+", default=ENCODE_RUNS, metavar="ENGINE:N",
                    help="memory:N / local:N (one process, N threads) or ray:N (N Ray CPU workers) (default: %(default)s)")
    ap.add_argument("--encode-docs", type=int, default=2048, help="man-page passages to encode (default: %(default)s)")
    ap.add_argument("--encode-batch-size", type=int, default=32)
    ap.add_argument("--encode-shard-size", type=int, default=256)
    ap.add_argument("--work", default=os.path.join("runs", "bench_scale"), help="where the encode runs write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    if args.n < 1000 or args.dim < 2 or args.queries < 1:
        ap.error("--n >= 1000, --dim >= 2 and --queries >= 1 please")
    if args.encode_docs < 1 or args.encode_batch_size < 1 or args.encode_shard_size < 1:
        ap.error("--encode-docs, --encode-batch-size and --encode-shard-size must be >= 1")
    name = "scale" if args.data == "mixture" else "scale_kde"
    rows_dir = os.path.join(args.out, name)
    os.makedirs(rows_dir, exist_ok=True)
    settings = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "budget": args.budget,
                "target_recall": args.target_recall, "seed": args.seed, "threads": faiss.omp_get_max_threads()}
    if args.data == "kde":
        settings = {**settings, "data": "kde", "kde_scale": args.kde_scale, "dim": 384, "clusters": None}
    x = q = truth = None
    rows = []
    for factory in args.factories:
        path = os.path.join(rows_dir, factory.replace(",", "_").replace("@", "_") + ".json")
        row = saved_row(path, settings)
        if row is not None or "index" not in args.parts:
            if row is not None:
                rows.append(row)
                print(f"{factory}: done earlier ({path})")
            continue
        if x is None:
            t = time.perf_counter()
            if args.data == "kde":
                bc = _compress()
                drawn = bc.kde(bc.encode("manpages", os.path.join("runs", "compress"), 0), args.n + args.queries,
                               args.kde_scale, args.seed)
                x, q = drawn[:args.n], drawn[args.n:]
            else:
                x = mixture(args.n, args.dim, args.clusters, args.seed)
                q = mixture(args.queries, args.dim, args.clusters, args.seed + 1)
            truth = exact_neighbours(x, q, 10)
            print(f"data and exact top-10 in {time.perf_counter() - t:.0f} s", flush=True)
        row = {**measure(factory, x, q, truth, args.target_recall, args.budget), "settings": settings}
        save_row(path, row)
        rows.append(row)
        print(f"{factory}: built in {row['build_seconds']} s, {row['bytes_per_vector']} B/vector, Recall@10 "
              f"{row['recall_at_10']}, {row['qps']} QPS", flush=True)
    enc_settings = {"docs": args.encode_docs, "batch_size": args.encode_batch_size, "shard_size": args.encode_shard_size,
                    "runs": args.encode_runs, "cores": os.cpu_count()}
    enc_path = os.path.join(rows_dir, "encode.json")
    enc = saved_row(enc_path, enc_settings) if args.data == "mixture" else None
    if "encode" in args.parts and args.data == "mixture":
        os.makedirs(args.work, exist_ok=True)
        corpus = os.path.join(args.work, "passages.jsonl")
        _compress().manpage_corpus(corpus, args.encode_docs)
        runs = []
        for run in args.encode_runs:
            runs.append(encode_run(run, corpus, args.work, args.encode_batch_size, args.encode_shard_size))
            print(f"encode {run}: {runs[-1]['items_per_s']} items/s, {runs[-1]['wall_seconds']} s wall", flush=True)
        enc = {"runs": runs, "settings": enc_settings}
        save_row(enc_path, enc)
    lines = render(rows, settings) if rows else ["# Scale"]
    if enc is not None:
        lines += render_encode(enc)
    write_benchmark(args.out, name, {"settings": settings, "results": rows, "encode": enc}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
