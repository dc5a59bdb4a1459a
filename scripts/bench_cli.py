"""Command-line start-up: ``lsb-mm --help`` and each ``<command> --help`` against ``python3 -c pass``,
and one ``lsb-mm search`` split into start-up, index load, model load, encode and search.

    python3 scripts/bench_cli.py [--repeats 5] [--docs 1000] [--out bench_results]

Every figure is the median of ``--repeats`` fresh processes (wall clock, ``subprocess``). The search
runs all-MiniLM-L6-v2 (the packaged weights, head ``none``) over the NAME lines of the first
``--docs`` man pages, indexed once in a temporary folder; its split comes from ``search --json``
(``seconds``), start-up is the rest of the process's wall time. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CLI = [sys.executable, "-m", "lsb_mm"]


def wall(cmd, repeats: int) -> tuple:
    """(median seconds, last stdout) of ``repeats`` fresh runs of ``cmd``."""
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    from lsb_mm_experiments.benchmarking import machine_info, write_benchmark
    from lsb_mm_experiments.datasets import load_manpages
    from lsb_mm.models.pretrained import minilm_name

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per figure; the median is reported")
    ap.add_argument("--docs", type=int, default=1000, help="man pages indexed for the search (default: %(default)s)")
    ap.add_argument("--query", default="copy a file descriptor")
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    rows = {"python3 -c pass": wall([sys.executable, "-c", "pass"], args.repeats)[0]}
    for command in ([], ["train"], ["eval"], ["index"], ["search"], ["encode"], ["demo"]):
        rows[" ".join(["lsb-mm", *command, "--help"])] = wall(CLI + command + ["--help"], args.repeats)[0]
    model = minilm_name()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for i, page in enumerate(load_manpages(limit=args.docs)):
                f.write(json.dumps({"_id": f"d{i}", "text": page.name_line}) + "\n")
        subprocess.run(CLI + ["index", "--model", model, "--head", "none", "--corpus", corpus, "--output",
                              os.path.join(tmp, "ix"), "--quiet"], capture_output=True, text=True, check=True)
        search = CLI + ["search", "--index", os.path.join(tmp, "ix"), "--model", model, "--head", "none", "--text",
                        args.query, "--json"]
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(search, capture_output=True, text=True, check=True).stdout
            total = time.perf_counter() - t0
            split = json.loads(out.strip().splitlines()[-1])["seconds"]
            runs.append({"total": total, **split, "start_up": total - sum(split.values())})
    parts = ("start_up", "index_load", "model_load", "encode", "search", "total")
    search_median = {k: statistics.median(r[k] for r in runs) for k in parts}
    payload = {"settings": vars(args), "help_seconds": rows, "search_seconds": search_median, "search_runs": runs,
               "machine": machine_info()}
    base = rows["python3 -c pass"]
    lines = ["# CLI start-up (median of %d fresh processes)" % args.repeats, "",
             f"Machine: {payload['machine'].get('cpu')}, {payload['machine'].get('cores')} cores.", "",
             "| command | seconds | minus `python3 -c pass` |", "|---|---:|---:|"]
    lines += [f"| `{k}` | {v:.3f} | {v - base:+.3f} |" for k, v in rows.items()]
    lines += ["", f"One `lsb-mm search --json` (all-MiniLM-L6-v2, {args.docs} man-page NAME lines indexed):", "",
              "| part | seconds |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {search_median[k]:.3f} |" for k in parts]
    write_benchmark(args.out, "cli", payload, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
