"""Load test of ``lsb-mm serve`` on loopback: 1, 8, 32 and 64 concurrent clients, each for a fixed
time, with dynamic batching on and off measured in one run.

    python3 scripts/bench_serve.py [--clients 1 8 32 64] [--seconds 10] [--docs 2000] [--out bench_results]

The server is ``lsb-mm serve`` in its own process on 127.0.0.1 (the model: all-MiniLM-L6-v2 with its
packaged weights and an untrained SLR head by default, which costs what a trained one does), over
an index of the NAME lines of the first ``--docs`` man pages. Each client is a loop of text
``POST /search`` requests (k = 10, the man-page NAME lines as queries, in turn) on its own
keep-alive connection, all in one asyncio process. Reported per mode and client count: requests,
errors (any non-200 or transport failure), QPS, p50 / p95 / p99 latency, and the mean batch the
server encoded (from ``/info``). Targets: no error at 64 clients; with batching, at least 2x the
throughput at 32 clients.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def percentile(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


async def load(url: str, clients: int, seconds: float, queries: List[str], k: int) -> Dict[str, Any]:
    """``clients`` concurrent request loops for ``seconds``; latencies of the successful requests."""
    import httpx

    latencies: List[float] = []
    errors: Dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        stop = time.perf_counter() + seconds

        async def client(n: int) -> None:
            i = n
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await http.post("/search", json={"index": "bench", "text": queries[i % len(queries)], "k": k})
                    ok, why = r.status_code == 200, f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[why] = errors.get(why, 0) + 1
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies) + sum(errors.values()),
            "errors": sum(errors.values()), "error_kinds": errors, "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1)}


def batch_stats(url: str) -> Dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(url + "/info", timeout=30) as r:
        b = json.loads(r.read())["batching"]
    return {"batches": b["batches"], "queries": b["queries"]}


def run_mode(serve_args: List[str], batching: bool, clients: List[int], seconds: float, queries: List[str],
             k: int) -> List[Dict[str, Any]]:
    from lsb_mm.serving.background import running_server

    rows = []
    with running_server(serve_args + ([] if batching else ["--no-batching"])) as url:
        asyncio.run(load(url, 4, 1.0, queries, k))  # warm-up: first-call costs out of the figures
        for n in clients:
            before = batch_stats(url)
            row = asyncio.run(load(url, n, seconds, queries, k))
            after = batch_stats(url)
            done = after["queries"] - before["queries"]
            row["mean_batch"] = round(done / max(1, after["batches"] - before["batches"]), 2)
            row["batching"] = batching
            rows.append(row)
            print(f"batching {'on ' if batching else 'off'} {n:3d} clients: {row['qps']:7.1f} QPS, p50 {row['p50_ms']} ms, "
                  f"p99 {row['p99_ms']} ms, errors {row['errors']}, mean batch {row['mean_batch']}", flush=True)
    return rows


def render(payload: Dict[str, Any]) -> List[str]:
    s = payload["settings"]
    lines = ["# lsb-mm serve under load (loopback)", "",
             f"Model {s['model']} (head {s['head']}), {s['docs']} man-page NAME lines indexed ({s['factory']}); "
             f"text queries, k = {s['k']}; each client count runs {s['seconds']} s after a warm-up. Batching: at most "
             f"{s['max_batch']} queries per encode, {s['batch_wait_ms']} ms wait. Server and clients share the machine.",
             f"Queries: {payload['queries']['count']} NAME lines, {payload['queries']['mean_chars']} characters on average "
             f"(longest {payload['queries']['max_chars']}).", "",
             "Threads: the server's torch threads (`lsb-mm serve --threads`; 0 = torch's choice, here one per core).", "",
             "| threads | batching | clients | requests | errors | QPS | p50 ms | p95 ms | p99 ms | mean batch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["results"]:
        lines.append(f"| {r['threads']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | {r['errors']} | {r['qps']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['mean_batch']} |")
    v = payload["verdict"]
    lines += ["", "| threads | clients | QPS batching on / off |", "|---:|---:|---:|"]
    lines += [f"| {key.split('/')[0]} | {key.split('/')[1]} | {ratio}x |" for key, ratio in v["speedup"].items()]
    lines += ["", f"- Errors at the most clients ({v['most_clients']}), all runs: {v['errors_at_most']} "
                  f"({'target met' if v['errors_at_most'] == 0 else 'target missed'}: 0)."]
    for t, met in v["speedup_target_met"].items():
        ratio = v["speedup"][f"{t}/{v['target_clients']}"]
        lines.append(f"- Threads {t}: batching at {v['target_clients']} clients gives {ratio}x "
                     f"the throughput without ({'target met' if met else 'target missed'}: >= 2x).")
    return lines


def main(argv=None) -> int:
    from lsb_mm_experiments.benchmarking import machine_info, render_saved, write_benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=10.0, help="per client count and mode (default: %(default)s)")
    ap.add_argument("--docs", type=int, default=2000, help="man pages indexed (default: %(default)s)")
    ap.add_argument("--model", default="minilm", help="model to serve (default: %(default)s, the packaged MiniLM)")
    ap.add_argument("--head", default="slr")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                    help="torch threads of the server, one run of both modes each (0: torch's choice; default: %(default)s)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--render", default=None, metavar="JSON", help="re-write the markdown of a saved result and stop")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    if min(args.clients) < 1 or args.seconds <= 0 or args.docs < 1:
        ap.error("--clients, --seconds and --docs must be positive")
    from lsb_mm_experiments.datasets import load_manpages

    lines = [p.name_line for p in load_manpages(limit=args.docs)]
    if not lines:
        ap.error("no man pages found (install the Debian manpages package: scripts/setup.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for i, text in enumerate(lines):
                f.write(json.dumps({"_id": f"d{i}", "text": text}) + "\n")
        model = os.path.join(tmp, "model")
        subprocess.run([sys.executable, "-c", "import sys, lsb_mm; lsb_mm.create_model(sys.argv[1], head=sys.argv[2])"
                        ".save_pretrained(sys.argv[3])", args.model, args.head, model], check=True)
        index = os.path.join(tmp, "index")
        subprocess.run([sys.executable, "-m", "lsb_mm", "index", "--model", model, "--corpus", corpus, "--output", index, "-q"],
                       check=True)
        serve_args = ["--model", model, "--index", f"bench={index}", "--max-batch", str(args.max_batch),
                      "--batch-wait-ms", str(args.batch_wait_ms)]
        queries = lines[: max(200, len(lines) // 10)]
        results = []
        for threads in args.threads:
            for batching in (True, False):
                rows = run_mode(serve_args + ["--threads", str(threads)], batching, args.clients, args.seconds, queries, args.k)
                results += [{**r, "threads": threads} for r in rows]
        with open(os.path.join(index, "manifest.json"), encoding="utf-8") as f:
            factory = json.load(f)["factory"]
    by = {(r["threads"], r["batching"], r["clients"]): r for r in results}
    speedup = {f"{t}/{n}": round(by[(t, True, n)]["qps"] / max(by[(t, False, n)]["qps"], 1e-9), 2)
               for t in args.threads for n in args.clients}
    most, target = max(args.clients), 32 if 32 in args.clients else max(args.clients)
    verdict = {"most_clients": most, "errors_at_most": sum(r["errors"] for r in results if r["clients"] == most),
               "target_clients": target, "speedup": speedup,
               "speedup_target_met": {str(t): speedup[f"{t}/{target}"] >= 2.0 for t in args.threads}}
    payload = {"settings": {"model": args.model, "head": args.head, "docs": len(lines), "factory": factory, "k": args.k,
                            "seconds": args.seconds, "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                            "clients": args.clients},
               "machine": machine_info(), "results": results, "verdict": verdict,
               "summary": {"median_qps_on": statistics.median(r["qps"] for r in results if r["batching"])},
               "queries": {"count": len(queries), "mean_chars": round(statistics.mean(map(len, queries)), 1),
                           "max_chars": max(map(len, queries))}}
    write_benchmark(args.out, "serve", payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
