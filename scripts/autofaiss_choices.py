"""``factory="auto"`` beside autofaiss: the index each picks for the same corpus size, dimension
and memory budget, and the bytes each choice holds.

autofaiss pins numpy < 2 and pulls faiss-cpu, so it lives in its own virtual environment:

    python3 -m venv /tmp/af && /tmp/af/bin/pip install autofaiss "pyarrow<15"
    PYTHONPATH=. /tmp/af/bin/python scripts/autofaiss_choices.py [--out bench_results]

For each (n, d, budget) of the grid: autofaiss's first index key
(``autofaiss.external.optimize.get_optimal_index_keys_v2``) with its own size estimate
(``IndexMetadata.estimated_index_size_in_bytes``), and lsb-mm's choice
(``lsb_mm.retrieval.autoindex.choose_factory``) with ours (``estimate_memory``). Only ``lsb_mm.retrieval.autoindex``
is imported from lsb-mm (numpy only). Writes ``<out>/autofaiss_choices.json`` and ``.md``;
``tests/test_autoindex.py`` checks the recorded rows against lsb-mm's current choices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

GRID = [(n, d, budget) for n in (100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
        for d in (384, 512) for budget in ("256M", "2G", "16G", "128G")]


def main(argv=None) -> int:
    import autofaiss
    from autofaiss.external.metadata import IndexMetadata
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    from lsb_mm.retrieval.autoindex import choose_factory, parse_memory
    from lsb_mm.errors import InputError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    rows = []
    for n, d, budget in GRID:
        keys = get_optimal_index_keys_v2(n, d, budget)
        theirs = keys[0] if keys else None
        their_bytes = IndexMetadata(theirs, n, d).estimated_index_size_in_bytes() if theirs else None
        try:
            ours = choose_factory(n, d, parse_memory(budget))
            our_key, our_bytes = ours.factory, ours.memory
        except InputError:
            our_key = our_bytes = None
        rows.append({"n": n, "dim": d, "budget": budget, "budget_bytes": parse_memory(budget),
                     "autofaiss": theirs, "autofaiss_bytes": their_bytes, "lsb_mm": our_key, "lsb_mm_bytes": our_bytes})
    version = getattr(autofaiss, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("autofaiss")
    payload = {"autofaiss": version, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "autofaiss_choices.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    lines = ["# `factory=\"auto\"` beside autofaiss", "",
             f"autofaiss {version} (`get_optimal_index_keys_v2`, its first key, and its size estimate) against lsb-mm's "
             "`choose_factory` (and `estimate_memory`), for the same corpus size, dimension and budget. "
             "— means no index fits.", "",
             "| n | d | budget | autofaiss | MiB | lsb-mm | MiB |", "|---:|---:|---|---|---:|---|---:|"]
    for r in rows:
        mib = lambda b: f"{b / 2 ** 20:,.0f}" if b is not None else "—"  # noqa: E731
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['budget']} | {r['autofaiss'] or '—'} | {mib(r['autofaiss_bytes'])} | "
                     f"{r['lsb_mm'] or '—'} | {mib(r['lsb_mm_bytes'])} |")
    with open(os.path.join(args.out, "autofaiss_choices.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
