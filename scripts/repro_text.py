"""Text reproduction on real Linux man pages: fine-tuned MiniLM, baseline vs SLR / LLR / CLR.

    python3 scripts/repro_text.py --max-steps 20 --group-size 1   # the README's numbers: 94 min on 2 CPU cores (1 thread, shared)
    python3 scripts/repro_text.py                      # the default: a full epoch (42 steps) with a mined negative each (~3x the compute)
    python3 scripts/repro_text.py --pages 60 --seeds 0 --max-steps 2    # a smoke run

Data: Debian ``manpages`` + ``manpages-dev``. Query = the NAME line, passage = the page body cut
to the longest prefix of whole words that fits the encoder's window (256 tokens for MiniLM), so
every span of a ``pop-N`` task is text the encoder sees. Pages are split by section (seeded,
``--test-fraction`` held out). Each training page gives one training query of a kind drawn
(seeded) from the evaluated kinds, built from the training pages alone (``--train-queries query``:
NAME lines only, as the paper trains on ordinary queries; NAME line -> page is too easy to teach
anything here: the loss is ~0 within one epoch). Every fine-tuned row trains the whole MiniLM
(``--train all``) plus its head with the same data, steps, batch and learning rates; only the head differs. Held-out
tasks: ``query``, ``keyword`` (top tf-idf terms), ``pop-16/32/64/128``; the corpus is the held-out
passages. Reference rows: the untuned MiniLM and BM25 (``bm25s``). Each head is also scored with
the head switched off (``<head> (head off)``): the fine-tuned tower alone.

Writes ``<out>/repro_text.json`` (every run's metrics, settings, machine) and ``<out>/repro_text.md``.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import lsb_mm  # noqa: E402
from lsb_mm.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm.pretrained import text_model_or_minilm  # noqa: E402
from lsb_mm.datasets.manpage_experiment import build_manpage_experiment  # noqa: E402
from lsb_mm.reproduce import bm25_results, head_tables, machine_line, run_grid, summarize  # noqa: E402

METRICS = ("ndcg@10", "mrr@10", "recall@10")


def build_data(args, model) -> tuple:
    """Train JSONL and held-out task folders under ``args.work``; returns (train file, task folders, info)."""
    return build_manpage_experiment(args.work, model, pages=args.pages, test_fraction=args.test_fraction, pop=args.pop,
                                    train_queries=args.train_queries)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="text encoder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pages", type=int, default=0, help="use the first N pages (0: all)")
    ap.add_argument("--test-fraction", type=float, default=0.4, help="share of pages held out (default: %(default)s)")
    ap.add_argument("--pop", type=int, nargs="+", default=[16, 32, 64, 128], help="span lengths of the pop-N tasks")
    ap.add_argument("--train-queries", nargs="+", default=None,
                    help="query kinds drawn for training pages (default: every evaluated kind; 'query' = NAME lines only)")
    ap.add_argument("--heads", nargs="+", default=["none", "slr", "llr", "clr"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=2,
                    help="passages per query: the positive + N-1 hard negatives mined each epoch with the current model "
                         "(1: in-batch negatives only; default: %(default)s)")
    ap.add_argument("--max-steps", type=int, default=0, help="cap on optimizer steps (0: --epochs)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5, help="tower learning rate (default: %(default)s)")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="head learning rate (default: %(default)s)")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--work", default="runs/repro_text", help="tasks, training data and models")
    ap.add_argument("--out", default="results", help="where repro_text.json / .md go")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown of a saved result JSON (no training)")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    label, args.model = text_model_or_minilm(args.model)
    t_start = time.perf_counter()
    untuned = lsb_mm.create_model(args.model, head="none")
    train_file, folders, data_info = build_data(args, untuned)
    rows = {"untuned": [lsb_mm.evaluate(untuned, folders, show_progress_bar=False)], "BM25": [bm25_results(folders)]}

    def config(head: str, seed: int) -> lsb_mm.TrainConfig:
        return lsb_mm.TrainConfig(model=args.model, train_data=train_file, output=os.path.join(args.work, "runs", f"{head}-seed{seed}"),
                                  modality="text", head=head, train="all", epochs=args.epochs, max_steps=args.max_steps,
                                  batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr, warmup_steps=args.warmup_steps,
                                  temperature=args.temperature, train_group_size=args.group_size,
                                  mine_negatives=args.group_size > 1, seed=seed, show_progress=False, log_steps=5)

    grid, runs = run_grid(config, args.heads, args.seeds, folders, log=lambda line: print(line, flush=True))
    rows.update(grid)
    payload = {"settings": vars(args), "label": label, "data": data_info, "runs": runs, "summary": summarize(rows),
               "results": rows, "machine": machine_info(), "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, "repro_text", payload, render(payload))
    return 0


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    label = payload.get("label", "all-MiniLM-L6-v2")
    order = ["untuned", "BM25"] + list(args.heads) + [f"{h} (head off)" for h in args.heads if h != "none"]
    lines = [f"# Text: Linux man pages, NAME line -> page (held-out {info['test_pages']} pages)", "", machine_line(payload),
             f"Fine-tuned rows: {label} trained in full + head, {args.epochs} epoch(s)"
             f"{f' / {args.max_steps} steps' if args.max_steps else ''}, batch {args.batch_size}, lr {args.lr}, head lr "
             f"{args.head_lr}, temperature {args.temperature}, {args.group_size - 1} mined hard negative(s) per query, "
             f"{info['train_pages']} training pages, one query each drawn from {args.train_queries or 'all evaluated kinds'}; "
             f"seeds {args.seeds}; mean ± std over seeds.", ""]
    return lines + head_tables(payload["summary"], list(args.heads), order, METRICS, "ndcg@10")


if __name__ == "__main__":
    raise SystemExit(main())
