"""One table for every modality and setting: the best head against `none` and the adapter control.

    python3 scripts/results_summary.py          # reads results/repro_*.json, writes results/summary.{json,md}

For each reproduction that has run (plug-in: ``results/repro_<key>_plugin.json``; fine-tune:
``results/repro_text.json``), the **best head** is the LexSemBridge head (slr, llr, clr) with the
highest mean validation NDCG@10 over its seeds (chosen on validation, never on the test tasks).
Its test NDCG@10, R@1 and R@10 on each task stand beside the baseline (``none``; the locked
encoder ``untuned`` in the text plug-in setting, where nothing else could train) and the linear
``adapter`` control, with the differences and Welch's p over the seeds, and the head's modulation
strength (median max(a)/min(a) on the test queries, the median over seeds). The issue-11 target:
the best head ahead of both by >= +0.020 NDCG@10 with p < 0.05 on `keyword` and `pop-16` (text) and
on a snippet task (image). A setting not yet run is listed as such.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from lsb_mm_experiments.benchmarking import write_benchmark
from lsb_mm_experiments.statistics import ALPHA, compare

HEADS = ("slr", "llr", "clr")
TARGET = 0.020
SETTINGS = [  # (modality label, setting, result file, baseline row, tasks, target tasks)
    ("text (man pages)", "plug-in", "repro_text_plugin.json", "untuned", ("query", "keyword", "pop-16", "pop-32"),
     ("keyword", "pop-16")),
    ("text (man pages)", "fine-tune", "repro_text.json", "none", ("query", "keyword", "pop-16", "pop-32"),
     ("keyword", "pop-16")),
    ("image (Tux Paint)", "plug-in", "repro_image-tuxpaint_plugin.json", "none",
     ("class", "snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random"),
     ("snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random")),
    ("image (Fashion-MNIST)", "plug-in", "repro_image-fashion-mnist_plugin.json", "none",
     ("class", "snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random"),
     ("snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random")),
    ("image (Tux Paint)", "fine-tune", "repro_image-tuxpaint_finetune.json", "none",
     ("class", "snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random"),
     ("snippet-10-random", "snippet-30-random", "snippet-50-random", "snippet-80-random")),
    ("text -> image (Tux Paint)", "plug-in", "repro_cross_plugin.json", "none", ("caption2image", "image2caption"), ()),
    ("text -> image (Tux Paint)", "fine-tune", "repro_cross_finetune.json", "none", ("caption2image", "image2caption"), ()),
]
METRICS = ("ndcg@10", "recall@1", "recall@10")


def best_head(payload: dict) -> str:
    """The head with the best mean validation value over its seeds."""
    scores = {}
    for h in HEADS:
        vals = [r["validation"]["value"] for r in payload["runs"] if r["head"] == h and r.get("validation")]
        if vals:
            scores[h] = statistics.mean(vals)
    return max(scores, key=scores.get) if scores else None


def summarise(results: str) -> dict:
    out = {"settings": [], "target": TARGET, "alpha": ALPHA}
    for modality, setting, name, base, tasks, targets in SETTINGS:
        path = os.path.join(results, name)
        entry = {"modality": modality, "setting": setting, "file": name}
        if not os.path.isfile(path):
            out["settings"].append({**entry, "status": "not run"})
            continue
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        s = payload["summary"]
        head = best_head(payload)
        if head is None:
            out["settings"].append({**entry, "status": "no head with a validation record to choose from"})
            continue
        tasks = [t for t in tasks if t in s[head]]  # a run may have evaluated fewer tasks
        mods = [r["modulation"]["max_over_min"] for r in payload["runs"] if r["head"] == head and r.get("modulation")]
        rows = []
        for t in tasks:
            row = {"task": t}
            for who in (head, base, "adapter"):
                row[who] = {m: s[who][t][m][:2] for m in METRICS} if who in s else None
            for other in (base, "adapter"):
                if other in s:
                    diff, _, p = compare(s, head, other, t, "ndcg@10")  # p is nan for two single runs
                    row[f"vs {other}"] = {"diff": diff, "p": p}
            rows.append(row)
        met = [r["task"] for r in rows if r["task"] in targets and all(
            r.get(f"vs {o}") and r[f"vs {o}"]["diff"] >= TARGET and r[f"vs {o}"]["p"] < ALPHA for o in (base, "adapter"))]
        out["settings"].append({**entry, "status": "run", "best_head": head, "baseline": base, "rows": rows,
                                "seeds": sorted({r["seed"] for r in payload["runs"]}),
                                "modulation": statistics.median(mods) if mods else None,
                                "target_tasks": list(targets), "target_met_on": met})
    return out


def compact(payload: dict) -> list:
    """One line per (modality, setting, task): the table the README shows."""
    lines = ["| modality | setting | best head | task | head NDCG@10 / R@1 / R@10 | baseline | adapter | "
             "Δ NDCG@10 vs baseline (p) | Δ vs adapter (p) | max/min a |", "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for e in payload["settings"]:
        if e["status"] != "run":
            lines.append(f"| {e['modality']} | {e['setting']} | {e['status']} | | | | | | | |")
            continue
        head, base = e["best_head"], e["baseline"]
        for r in e["rows"]:
            cells = [" / ".join(f"{r[w][m][0]:.3f}" for m in METRICS) if r.get(w) else "–" for w in (head, base, "adapter")]
            vs = [f"{r[k]['diff']:+.3f} ({r[k]['p']:.2g})" if r.get(k) else "–" for k in (f"vs {base}", "vs adapter")]
            star = " **✓**" if r["task"] in e["target_met_on"] else ""
            mod = f"{e['modulation']:.2f}" if e["modulation"] else "–"
            lines.append(f"| {e['modality']} | {e['setting']} | `{head}` | {r['task']}{star} | " +
                         " | ".join(cells + vs) + f" | {mod} |")
    return lines


def render(payload: dict) -> list:
    lines = ["# Every setting: the best head (chosen on validation) against the baseline and the linear adapter", "",
             f"Test NDCG@10 / R@1 / R@10, mean over seeds; Δ NDCG@10 with Welch's p. Target: the best head ahead of both "
             f"by ≥ +{payload['target']:.3f} NDCG@10 with p < {payload['alpha']} on the target tasks (**✓** where met). "
             "Baseline = `none`, or the locked encoder (`untuned`) in the text plug-in setting.", ""] + compact(payload) + [""]
    for e in payload["settings"]:
        lines += [f"## {e['modality']}, {e['setting']}", ""]
        if e["status"] != "run":
            lines += [f"{e['status'].capitalize()} (`results/{e['file']}`).", ""]
            continue
        head, base = e["best_head"], e["baseline"]
        mod = f"{e['modulation']:.2f}" if e["modulation"] else "–"
        lines += [f"Best head on validation: `{head}` (modulation, median max/min a on the test queries: {mod}); "
                  f"seeds {e['seeds']}; `results/{e['file']}`.", "",
                  f"| task | `{head}` NDCG@10 / R@1 / R@10 | `{base}` | `adapter` | Δ vs `{base}` (p) | Δ vs `adapter` (p) |",
                  "|---|---|---|---|---:|---:|"]
        for r in e["rows"]:
            cells = [" / ".join(f"{r[w][m][0]:.3f}" for m in METRICS) if r.get(w) else "–" for w in (head, base, "adapter")]
            vs = [f"{r[k]['diff']:+.3f} ({r[k]['p']:.2g})" if r.get(k) else "–" for k in (f"vs {base}", "vs adapter")]
            lines.append(f"| {r['task']} | " + " | ".join(cells + vs) + " |")
        if e["target_tasks"]:
            met = e["target_met_on"]
            lines += ["", f"Target met on: {', '.join(met)}." if met else
                      f"Target **not met** on any of {', '.join(e['target_tasks'])}."]
        lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="where the repro_*.json are and summary.{json,md} go")
    args = ap.parse_args(argv)
    payload = summarise(args.results)
    write_benchmark(args.results, "summary", payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
