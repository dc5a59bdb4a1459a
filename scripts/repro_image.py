"""Image -> image reproduction on real data: Fashion-MNIST and Tux Paint categories, `class` and `snippet-P`.

    python3 scripts/repro_image.py                     # full run: both datasets, 3 seeds x 4 heads (41 min on 2 CPU cores at 1 thread, beside 2 other jobs)
    python3 scripts/repro_image.py --datasets tuxpaint --limit 120 --seeds 0 --max-steps 2   # a smoke run

Data: Debian ``dataset-fashion-mnist`` (a seeded, class-balanced sample: ``--per-class`` images of
each class from the train split for training and from the test split for evaluation) and Debian
``tuxpaint-stamps-default`` (stamps labelled by category folder, split by category, seeded).
Model: the image tower of the MiniLM + EfficientNet-Lite0 dual encoder (ImageNet weights, locked)
with its learned projection (LiT-style): ``none`` trains the projection; each head trains the
projection and its visual-word head. Training pairs, from the training images only: a random crop
(10/30/50/80% of each side, random position) -> its image, and an image -> another image of its
class. Held-out tasks: ``class`` (half of each class queries the other half) and ``snippet-P``
(P = 10, 30, 50, 80; a random-position crop -> its source image). Reference row: the untuned
EfficientNet-Lite0 pooled features. The locked tower's features are computed once per image.

Writes ``<out>/repro_image.json`` and ``<out>/repro_image.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm.training.feature_cache import ImageFeatureCache  # noqa: E402
from lsb_mm.models.pretrained import efficientnet_lite0_weights  # noqa: E402
from lsb_mm_experiments.datasets.image_experiment import IMAGE_DATASETS, IMAGE_SIZE, build_image_experiment  # noqa: E402
from lsb_mm_experiments.reproduce import run_grid  # noqa: E402
from lsb_mm_experiments.statistics import head_tables, machine_line, summarize  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repro_cross import add_lit_args, describe, lit_config  # noqa: E402

METRICS = ("ndcg@10", "mrr@10", "recall@10")


def run_dataset(name: str, args, cache: ImageFeatureCache) -> dict:
    train_file, folders, info = build_image_experiment(os.path.join(args.work, name), name, per_class=args.per_class,
                                                       limit=args.limit, test_fraction=args.test_fraction,
                                                       snippets=args.snippets)
    args.img_size = IMAGE_SIZE[name] if args.img_size_arg is None else args.img_size_arg
    untuned = lsb_mm.create_model("timm:tf_efficientnet_lite0", head="none", weights=efficientnet_lite0_weights(),
                                  img_size=args.img_size)
    with cache.attach(untuned):
        rows = {"EfficientNet-Lite0 (untuned)": [lsb_mm.evaluate(untuned, folders, show_progress_bar=False)]}
    grid, runs = run_grid(lit_config(args, "image", train_file, os.path.join(args.work, name)), args.heads, args.seeds,
                          folders, feature_cache=cache, log=lambda line: print(f"{name}: {line}", flush=True))
    rows.update(grid)
    return {"data": info, "img_size": args.img_size, "runs": runs, "summary": summarize(rows), "results": rows}


def render(payload: dict) -> list:
    lines = ["# Image -> image: class and snippet tasks", "", machine_line(payload) + " Snippet crops are at random positions.", ""]
    for name, part in payload["datasets"].items():
        args = argparse.Namespace(**{**payload["settings"], "img_size": part["img_size"]})
        info = part["data"]
        order = ["EfficientNet-Lite0 (untuned)"] + list(args.heads) + [f"{h} (head off)" for h in args.heads if h != "none"]
        lines += [f"## {name}: {info.get('test', 10 * args.per_class)} held-out images", ""]
        lines += describe(args, f"{info['train_examples']} training pairs (crops and same-class images)")
        lines += head_tables(part["summary"], list(args.heads), order, METRICS, "ndcg@10") + [""]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lit_args(ap, epochs=3, batch_size=64, img_size=None)
    ap.add_argument("--datasets", nargs="+", default=list(IMAGE_DATASETS), choices=IMAGE_DATASETS)
    ap.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class, train and test (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="Tux Paint: use the first N stamps (0: all)")
    ap.add_argument("--snippets", type=int, nargs="+", default=[10, 30, 50, 80], help="crop percentages of the snippet tasks")
    ap.add_argument("--work", default="runs/repro_image", help="images, tasks, training data and models")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    args.img_size_arg = args.img_size  # None: per dataset (IMAGE_SIZE)
    t_start = time.perf_counter()
    cache = ImageFeatureCache(max_gb=8)
    payload = {"settings": dict(vars(args)), "datasets": {}}
    for name in args.datasets:
        payload["datasets"][name] = run_dataset(name, args, cache)
    payload.update(feature_cache=cache.stats(), machine=machine_info(), total_seconds=round(time.perf_counter() - t_start, 1))
    write_benchmark(args.out, "repro_image", payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
