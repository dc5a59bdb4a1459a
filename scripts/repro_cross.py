"""Text -> image reproduction on real Tux Paint stamps: the MiniLM + EfficientNet-Lite0 dual encoder.

    python3 scripts/repro_cross.py                     # full run: 3 seeds x 4 heads (62 min on 2 CPU cores at 1 thread, beside 2 other jobs)
    python3 scripts/repro_cross.py --limit 80 --seeds 0 --max-steps 2   # a smoke run

Data: Debian ``tuxpaint-stamps-default``, every captioned PNG stamp (English caption = first line of
its ``.txt``), split by category (seeded, ``--test-fraction`` held out). Model: all-MiniLM-L6-v2
(text) and EfficientNet-Lite0 with ImageNet weights (image), both locked, with learned linear
projections into a shared space (LiT-style). ``none`` trains the projections; each head trains the
projections and its heads (text and visual-word image heads), same data, steps, batch and learning
rates. Symmetric InfoNCE (caption->image and image->caption). Held-out tasks: ``caption2image``
(Recall@1/5/10) and ``image2caption``. Reference row: the untrained dual encoder (random
projections: chance level). The locked image tower's features are computed once per image.

Writes ``<out>/repro_cross.json`` and ``<out>/repro_cross.md``.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm.training.feature_cache import ImageFeatureCache  # noqa: E402
from lsb_mm.models.pretrained import dual_encoder  # noqa: E402
from lsb_mm_experiments.datasets.image_experiment import build_cross_experiment  # noqa: E402
from lsb_mm_experiments.reproduce import run_grid  # noqa: E402
from lsb_mm_experiments.statistics import head_tables, machine_line, summarize  # noqa: E402

METRICS = ("recall@1", "recall@5", "recall@10", "ndcg@10", "mrr@10")


def add_lit_args(ap: argparse.ArgumentParser, epochs: int, batch_size: int, img_size: int) -> None:
    """Options shared by the LiT-style reproductions (dual encoder, locked towers)."""
    ap.add_argument("--heads", nargs="+", default=["none", "slr", "llr", "clr"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--img-size", type=int, default=img_size, help="image side in px (default: %(default)s)")
    ap.add_argument("--embed-dim", type=int, default=256, help="shared space of the projections (default: %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=256, help="visual words (default: %(default)s)")
    ap.add_argument("--test-fraction", type=float, default=0.4, help="share held out (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--max-steps", type=int, default=0, help="cap on optimizer steps (0: --epochs)")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the projections (default: %(default)s)")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the heads (default: %(default)s)")
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--out", default="results", help="where the JSON / markdown go")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown of a saved result JSON (no training)")


def lit_config(args, modality: str, train_file: str, work: str, **extra):
    """``config(head, seed)`` for :func:`lsb_mm_experiments.reproduce.run_grid`: the dual encoder, towers locked."""
    name, options = dual_encoder(args.img_size, args.embed_dim)

    def config(head: str, seed: int) -> lsb_mm.TrainConfig:
        return lsb_mm.TrainConfig(model=name, overwrite=True, model_options=options, train_data=train_file, modality=modality, head=head,
                                  train="heads", output=os.path.join(work, "runs", f"{head}-seed{seed}"),
                                  epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                                  head_lr=args.head_lr, temperature=args.temperature, vocab_size=args.vocab_size,
                                  seed=seed, show_progress_bar=False, log_steps=10, **extra)

    return config


def describe(args, what: str) -> list:
    return [f"Dual encoder all-MiniLM-L6-v2 + EfficientNet-Lite0 (ImageNet) at {args.img_size} px, towers locked, "
            f"{args.embed_dim}-d projections; {what}; {args.epochs} epoch(s){f' / {args.max_steps} steps' if args.max_steps else ''}, "
            f"batch {args.batch_size}, lr {args.lr}, head lr {args.head_lr}, temperature {args.temperature}, "
            f"{args.vocab_size} visual words; seeds {args.seeds}; mean ± std over seeds.", ""]


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    order = ["untrained"] + list(args.heads) + [f"{h} (head off)" for h in args.heads if h != "none"]
    lines = [f"# Text -> image: Tux Paint captions -> stamps ({info['test']} held-out stamps, {info['train']} for training)", ""]
    lines += [machine_line(payload)] + describe(args, "symmetric InfoNCE on captions")
    return lines + head_tables(payload["summary"], list(args.heads), order, METRICS, "recall@10")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lit_args(ap, epochs=15, batch_size=32, img_size=160)
    ap.add_argument("--limit", type=int, default=0, help="use the first N stamps (0: all)")
    ap.add_argument("--work", default="runs/repro_cross", help="tasks, training data and models")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    t_start = time.perf_counter()
    train_file, folders, info = build_cross_experiment(args.work, limit=args.limit, test_fraction=args.test_fraction)
    cache = ImageFeatureCache()
    config = lit_config(args, "cross", train_file, args.work, symmetric=True)
    untuned = lsb_mm.create_model(config("none", 0).model, head="none", **config("none", 0).model_options)
    with cache.attach(untuned):
        rows = {"untrained": [lsb_mm.evaluate(untuned, folders, show_progress_bar=False)]}
    grid, runs = run_grid(config, args.heads, args.seeds, folders, feature_cache=cache, log=lambda line: print(line, flush=True))
    rows.update(grid)
    info["feature_cache"] = cache.stats()
    payload = {"settings": vars(args), "data": info, "runs": runs, "summary": summarize(rows), "results": rows,
               "machine": machine_info(), "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, "repro_cross", payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
