"""Reports of evaluation runs: JSON for machines, a markdown table and a Recall@k plot for people."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from lsb_mm.files import atomic_write, write_text

__all__ = ["write_reports", "markdown_table", "default_columns"]


def default_columns(runs: Sequence[Dict[str, object]]) -> List[str]:
    """NDCG, MRR and Recall at the cut-off of the runs' primary metric (NDCG@10 unless 10 was not asked for)."""
    primaries = {str(r.get("primary", "ndcg@10")) for r in runs}
    if len(primaries) != 1:
        raise ValueError(f"runs evaluated at different cut-offs (primary metrics {sorted(primaries)}): give columns")
    k = primaries.pop().split("@")[1]
    return [f"ndcg@{k}", f"mrr@{k}", f"recall@{k}"]


def markdown_table(runs: Sequence[Dict[str, object]], columns: Optional[Sequence[str]] = None) -> str:
    """Models x tasks; each cell holds the chosen metrics (default: :func:`default_columns`), separated by ' / '."""
    columns = default_columns(runs) if columns is None else list(columns)
    tasks: List[str] = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    head = "| model | " + " | ".join(tasks) + " |"
    lines = [f"Cells: {' / '.join(c.upper().replace('RECALL', 'R') for c in columns)}", "", head,
             "|---|" + "---|" * len(tasks)]
    for r in runs:
        cells = []
        for t in tasks:
            m = r["tasks"].get(t, {}).get("metrics")
            cells.append(" / ".join(f"{m[c]:.3f}" for c in columns) if m else "-")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


REPORT_FILES = {"json": "results.json", "markdown": "results.md", "plot": "recall.png"}


def earlier_reports(folder: str) -> List[str]:
    """The report files of an earlier :func:`write_reports` in ``folder`` (they would be replaced)."""
    return [name for name in REPORT_FILES.values() if os.path.lexists(os.path.join(folder, name))]


def write_reports(runs: Sequence[Dict[str, object]], folder: str) -> Dict[str, str]:
    """``results.json`` (``{label: run}``; a run's label is its ``label``, else its ``model``, which
    must be unique), ``results.md`` and ``recall.png`` (Recall@k per task, one line per model)."""
    labels = [str(r.get("label", r["model"])) for r in runs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"runs share the labels {repeated}: give each run its own label")
    os.makedirs(folder, exist_ok=True)
    paths = {key: os.path.join(folder, name) for key, name in REPORT_FILES.items()}
    write_text(paths["json"], json.dumps(dict(zip(labels, runs)), indent=2))
    write_text(paths["markdown"], markdown_table(runs))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for r in runs:
            m = r["tasks"].get(task, {}).get("metrics")
            if not m:
                continue
            ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("recall@"))
            ax.plot(ks, [m[f"recall@{k}"] for k in ks], marker="o", label=r["model"])
        ax.set_title(task)
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(paths["plot"], "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return paths
