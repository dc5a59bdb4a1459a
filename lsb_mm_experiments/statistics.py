"""Several seeds summarised as mean ± std, tables for people, and verdicts (Welch's t-test over the
seeds, p < ``ALPHA``) of whether a head beats its baseline."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


__all__ = ["Summary", "summarize", "results_table", "compact_table", "verdicts", "compare", "welch_p", "head_tables",
           "machine_line", "ALPHA"]

Summary = Dict[str, Dict[str, Dict[str, List[float]]]]  # row -> task -> metric -> [mean, std, n]


def summarize(rows: Dict[str, List[Dict[str, object]]]) -> Summary:
    """Mean, sample std (0 for one run) and count of every metric of every task, per row."""
    out: Summary = {}
    for name, results in rows.items():
        tasks = list(dict.fromkeys(t for r in results for t in r["tasks"]))
        out[name] = {}
        for t in tasks:
            metrics = [r["tasks"][t]["metrics"] for r in results if t in r["tasks"]]
            out[name][t] = {}
            for m in metrics[0]:
                v = np.array([x[m] for x in metrics], dtype=np.float64)
                out[name][t][m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
    return out


ALPHA = 0.05  # significance level of the verdicts


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test on two ``(mean, std, n)`` rows. A row of one run counts as
    exact (a deterministic reference such as the untuned model or BM25): a one-sample test against it."""
    from lsb_mm.errors import require_extra

    require_extra("experiments", "Welch's t-test of the reproductions", "scipy")
    from scipy import stats

    diff = a[0] - b[0]
    va, vb = (r[1] ** 2 / r[2] if r[2] > 1 else 0.0 for r in (a, b))
    se = math.sqrt(va + vb)
    if se == 0.0:
        return 1.0 if abs(diff) < 1e-12 else 0.0
    terms = [v ** 2 / (r[2] - 1) for v, r in ((va, a), (vb, b)) if r[2] > 1]
    df = (va + vb) ** 2 / sum(terms)
    return float(2 * stats.t.sf(abs(diff) / se, df))


def compare(summary: Summary, row: str, baseline: str, task: str, metric: str) -> Tuple[float, str, float]:
    """``(difference of means, verdict, p)``: ``better`` / ``worse`` when Welch's t-test over the seeds
    gives p < ``ALPHA``, ``same`` otherwise, ``one run`` when neither row has two seeds (p is nan)."""
    a, b = summary[row][task][metric], summary[baseline][task][metric]
    diff = a[0] - b[0]
    if a[2] < 2 and b[2] < 2:
        return diff, "one run", float("nan")
    p = welch_p(a, b)
    if p < ALPHA:
        return diff, "better" if diff > 0 else "worse", p
    return diff, "same", p


def _cell(stat: Sequence[float]) -> str:
    """``mean ± std`` over seeds; a single run shows its value alone (no spread to report)."""
    return f"{stat[0]:.3f} ± {stat[1]:.3f}" if stat[2] > 1 else f"{stat[0]:.3f}"


def _label(metric: str) -> str:
    name, k = metric.split("@")
    return {"ndcg": "NDCG", "mrr": "MRR", "recall": "R"}.get(name, name) + f"@{k}"


def results_table(summary: Summary, metrics: Sequence[str], baseline: str = "", order: Sequence[str] = (),
                  delta_metric: Optional[str] = None) -> List[str]:
    """Markdown lines: one row per (task, model), cells ``mean ± std``; with a ``baseline`` row, a
    last column gives each other row's difference on ``delta_metric`` (default: the first) and its verdict."""
    rows = list(order) or list(summary)
    tasks = list(dict.fromkeys(t for r in rows for t in summary[r]))
    delta_metric = delta_metric or metrics[0]
    head = ["task", "model", "seeds"] + [_label(m) for m in metrics]
    if baseline:
        head.append(f"Δ {_label(delta_metric)} vs {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for t in tasks:
        for r in rows:
            s = summary[r].get(t)
            if s is None:
                continue
            cells = [t, r, str(int(s[metrics[0]][2]))] + [_cell(s[m]) for m in metrics]
            if baseline:
                if r == baseline or t not in summary.get(baseline, {}):
                    cells.append("")
                else:
                    diff, verdict, p = compare(summary, r, baseline, t, delta_metric)
                    cells.append(f"{diff:+.3f} ({verdict}{'' if math.isnan(p) else f', p={p:.2g}'})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def compact_table(summary: Summary, metric: str, order: Sequence[str] = ()) -> List[str]:
    """Markdown lines: models x tasks, each cell ``mean ± std`` of one metric."""
    rows = list(order) or list(summary)
    tasks = list(dict.fromkeys(t for r in rows for t in summary[r]))
    lines = [f"| {_label(metric)} | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for r in rows:
        cells = [_cell(summary[r][t][metric]) if t in summary[r] else "-" for t in tasks]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def verdicts(summary: Summary, heads: Sequence[str], baseline: str, metric: str) -> List[str]:
    """One plain sentence per head: the tasks where it beats, matches or trails the baseline."""
    lines = []
    for h in heads:
        tasks = [t for t in summary[h] if t in summary[baseline]]
        by: Dict[str, List[str]] = {"better": [], "same": [], "worse": [], "one run": []}
        for t in tasks:
            diff, v, p = compare(summary, h, baseline, t, metric)
            by[v].append(f"{t} ({diff:+.3f}{'' if math.isnan(p) else f', p={p:.2g}'})")
        parts = []
        if by["better"]:
            parts.append("beats the baseline on " + ", ".join(by["better"]))
        if by["same"]:
            parts.append(f"does not beat it (no significant difference, Welch's t-test p ≥ {ALPHA}) on " + ", ".join(by["same"]))
        if by["worse"]:
            parts.append("is worse on " + ", ".join(by["worse"]))
        if by["one run"]:
            parts.append("cannot be judged from one seed on " + ", ".join(by["one run"]))
        lines.append(f"- `{h}` vs `{baseline}`, {_label(metric)}: " + "; ".join(parts) + ".")
    return lines


def head_tables(summary: Summary, heads: Sequence[str], order: Sequence[str], metrics: Sequence[str], metric: str,
                baselines: Sequence[str] = ("none",)) -> List[str]:
    """Compact table on ``metric``, the full table with each row's difference to the first baseline
    present, and the verdicts of every other head against each baseline present."""
    present = [b for b in baselines if b in summary]
    lines = compact_table(summary, metric, order) + ["", "All metrics:", ""]
    lines += results_table(summary, metrics, baseline=present[0] if present else "", order=order, delta_metric=metric)
    for base in present:
        named = [h for h in heads if h != base and h in summary]
        if named:
            lines += ["", f"Verdicts against `{base}` (Welch's t-test over the seeds, p < {ALPHA}):", ""]
            lines += verdicts(summary, named, base, metric)
    return lines


def machine_line(payload: Dict[str, Any]) -> str:
    """``Machine: ...`` of a saved result (its ``machine`` and, when known, ``total_seconds``)."""
    m, seconds = payload["machine"], payload.get("total_seconds")
    return (f"Machine: {m['cuda'] or m['cpu']}, {m['cores']} cores ({m['threads']} torch thread(s), torch {m['torch']})"
            + (f"; total {seconds:.0f} s." if seconds is not None else "."))
