"""Text reproduction on real Linux man pages, fine-tune setting: MiniLM trained in full with each head.

    python3 scripts/repro_text.py                      # the default: a full epoch with a mined negative, then each head converged
    python3 scripts/repro_text.py --max-steps 20 --group-size 1 --no-converge-heads --val-fraction 0 --out results/old   # the first, 20-step protocol
    python3 scripts/repro_text.py --pages 60 --seeds 0 --max-steps 2 --converge-max-steps 4 --out /tmp/smoke    # a smoke run

Data: Debian ``manpages`` + ``manpages-dev``. Query = the NAME line, passage = the page body cut
to the longest prefix of whole words that fits the encoder's window (256 tokens for MiniLM), so
every span of a ``pop-N`` task is text the encoder sees. Pages are split by section (seeded,
``--test-fraction`` held out). ``--val-fraction`` of the training pages (drawn per seed) are
validation pages, never trained on. Stage 1 (fine-tune): each remaining training page gives one
training query of a kind drawn (seeded) from the evaluated kinds (``--train-queries query``: NAME
lines only), and every row trains the whole MiniLM (``--train all``) plus its head with the same
data, steps, batch and learning rates; only the head differs. Stage 2 (``--converge-heads``, the
default; not for ``none``): the fine-tuned tower is locked and its head (``adapter``: the linear
control) trains on with the plug-in recipe of ``scripts/sweep_heads.py`` (``--recipe``: the
sweep's winner for that head; cached tower outputs, corpus negatives, one query of every kind per
training page) with early stopping on the validation pages; the best model there is tested.
Held-out tasks: ``query``, ``keyword`` (top tf-idf terms), ``pop-16/32/64/128``; the corpus is the
held-out passages. Reference rows: the untuned MiniLM, BM25 (``bm25s``) and their fusions, RRF and
weighted (dense weight chosen on tasks over the training pages). Each head is also
scored with the head switched off (``<head> (head off)``): the fine-tuned tower alone.

Each (head, seed) run is one JSON under ``<out>/repro_text/`` (finished runs are not redone);
``<out>/repro_text.json`` (every run's metrics, settings, machine) and ``.md`` gather them.
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
from lsb_mm.models.pretrained import text_model_or_minilm  # noqa: E402
from lsb_mm_experiments.datasets.manpage_experiment import build_manpage_experiment  # noqa: E402
from lsb_mm.data.splits import split_jsonl_by_document  # noqa: E402
from lsb_mm_experiments.plugin import fusion_note, plugin_config, text_references, update_references  # noqa: E402
from lsb_mm_experiments.reproduce import run_grid, run_script  # noqa: E402
from lsb_mm_experiments.statistics import head_tables, machine_line, summarize  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repro_plugin import recipes  # noqa: E402

METRICS = ("ndcg@10", "mrr@10", "recall@10")


def build_data(args, model) -> tuple:
    """Held-out task folders and the two training files (one query per page for the fine-tune, one
    of every kind per page for the heads' second stage) under ``args.work``; returns (one-per-page
    file, every-kind file, task folders, info)."""
    one, folders, info = build_manpage_experiment(args.work, model, pages=args.pages, test_fraction=args.test_fraction,
                                                  pop=args.pop, train_queries=args.train_queries)
    every, _, every_info = build_manpage_experiment(os.path.join(args.work, "every_kind"), model, pages=args.pages,
                                                    test_fraction=args.test_fraction, pop=args.pop, per_page="all")
    info["train_examples_every_kind"] = every_info["train_examples"]
    return one, every, folders, info


def saved_references(payload: dict) -> dict:
    """The reference rows of a saved result, on its tasks rebuilt from its settings."""
    args = argparse.Namespace(**payload["settings"])
    untuned = lsb_mm.create_model(args.model, head="none")
    _, _, folders, info = build_data(args, untuned)
    return text_references(untuned, folders, info["train_tasks"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="text encoder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pages", type=int, default=0, help="use the first N pages (0: all)")
    ap.add_argument("--test-fraction", type=float, default=0.4, help="share of pages held out (default: %(default)s)")
    ap.add_argument("--pop", type=int, nargs="+", default=[16, 32, 64, 128], help="span lengths of the pop-N tasks")
    ap.add_argument("--train-queries", nargs="+", default=None,
                    help="query kinds drawn for training pages (default: every evaluated kind; 'query' = NAME lines only)")
    ap.add_argument("--heads", nargs="+", default=["none", "slr", "llr", "clr", "adapter"])
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
    ap.add_argument("--val-fraction", type=float, default=0.2, help="training pages held out as validation, per seed")
    ap.add_argument("--converge-heads", action=argparse.BooleanOptionalAction, default=True,
                    help="stage 2: train each head on with the tuned tower locked, to its best validation step (default: on)")
    ap.add_argument("--recipe", default="results/sweep_text.json", help="stage 2: the sweep whose winners set lr etc.")
    ap.add_argument("--converge-max-steps", type=int, default=600, help="stage 2: at most this many steps")
    ap.add_argument("--converge-batch-size", type=int, default=64)
    ap.add_argument("--eval-steps", type=int, default=50, help="stage 2: validation every N steps")
    ap.add_argument("--patience", type=int, default=3, help="stage 2: stop after N evaluations without a gain")
    ap.add_argument("--work", default="runs/repro_text", help="tasks, training data and models")
    ap.add_argument("--out", default="results", help="where repro_text.json / .md go")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown of a saved result JSON (no training)")
    ap.add_argument("--update-references", metavar="JSON",
                    help="re-compute the reference rows (untuned, BM25 and their fusions) of a saved result on its "
                         "rebuilt tasks, then re-write it (no training)")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    if args.update_references:
        return update_references(args.update_references, saved_references, render)
    if not 0 <= args.val_fraction < 1:
        ap.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.converge_heads and not args.val_fraction:
        ap.error("--converge-heads stops on validation pages: give --val-fraction > 0 (or --no-converge-heads)")
    label, args.model = text_model_or_minilm(args.model)
    t_start = time.perf_counter()
    untuned = lsb_mm.create_model(args.model, head="none")
    one_file, every_file, folders, data_info = build_data(args, untuned)
    references = text_references(untuned, folders, data_info["train_tasks"])
    rows = dict(references)
    recipe = recipes(args.recipe, [h for h in args.heads if h != "none"]) if args.converge_heads else {}

    splits = {}

    def split(seed: int):
        """(fine-tune file, second-stage file, validation file) of a seed: its validation pages left out."""
        if seed not in splits and not args.val_fraction:  # every training page trains (no stage 2 then)
            splits[seed] = one_file, every_file, None
        if seed not in splits:
            (every_train, val), (one_train, _) = split_jsonl_by_document([every_file, one_file], os.path.join(
                args.work, f"split-seed{seed}"), args.val_fraction, seed)
            splits[seed] = one_train, every_train, val
        return splits[seed]

    def config(head: str, seed: int) -> lsb_mm.TrainConfig:
        return lsb_mm.TrainConfig(model=args.model, overwrite=True, train_data=split(seed)[0], output=os.path.join(args.work, "runs", f"{head}-seed{seed}"),
                                  modality="text", head=head, train="all", epochs=args.epochs, max_steps=args.max_steps,
                                  batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr, warmup_steps=args.warmup_steps,
                                  temperature=args.temperature, train_group_size=args.group_size,
                                  mine_negatives=args.group_size > 1, seed=seed, show_progress_bar=False, log_steps=5)

    def converge(head: str, seed: int, tuned: str):
        if not args.converge_heads or head == "none":
            return None
        _, every_train, val = split(seed)
        r = recipe[head]
        stage = argparse.Namespace(model=tuned, batch_size=args.converge_batch_size, max_steps=args.converge_max_steps,
                                   eval_steps=args.eval_steps, patience=args.patience, val_fraction=0.0)
        return plugin_config(stage, head, every_train, os.path.join(args.work, "runs", f"{head}-seed{seed}-converged"),
                             r["lr"], r["temperature"], r["weight_decay"], seed, eval_data=val)

    grid, runs = run_grid(config, args.heads, args.seeds, folders, then=converge,
                          runs_dir=os.path.join(args.out, "repro_text"), log=lambda line: print(line, flush=True))
    rows.update(grid)
    payload = {"settings": vars(args), "label": label, "recipe": recipe, "data": data_info, "runs": runs, "references": list(references),
               "summary": summarize(rows), "results": rows, "machine": machine_info(), "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, "repro_text", payload, render(payload))
    return 0


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    label = payload.get("label", "all-MiniLM-L6-v2")
    order = payload.get("references", ["untuned", "BM25"]) + list(args.heads) + [f"{h} (head off)" for h in args.heads if h != "none"]
    converge = getattr(args, "converge_heads", False)
    val = getattr(args, "val_fraction", 0.0)
    lines = [f"# Text: Linux man pages, NAME line -> page (held-out {info['test_pages']} pages)", "", machine_line(payload),
             f"Stage 1, fine-tune: {label} trained in full + head, {args.epochs} epoch(s)"
             f"{f' / {args.max_steps} steps' if args.max_steps else ''}, batch {args.batch_size}, lr {args.lr}, head lr "
             f"{args.head_lr}, temperature {args.temperature}, {args.group_size - 1} mined hard negative(s) per query, "
             f"{info['train_pages']} training pages{f' less {val:g} of them held out as validation per seed' if val else ''}, "
             f"one query each drawn from {args.train_queries or 'all evaluated kinds'}; seeds {args.seeds}; mean ± std over seeds.", ""]
    if converge:
        lines += [f"Stage 2, heads converged (every row but `none`): the tuned tower locked, the head trained on with the "
                  f"sweep's plug-in recipe ({args.recipe}: per head lr / temperature / weight decay below), one query of every "
                  f"kind per training page, corpus negatives, batch {args.converge_batch_size}, at most "
                  f"{args.converge_max_steps} steps, validation on the held-out training pages every {args.eval_steps} "
                  f"steps, patience {args.patience}; the best model on validation NDCG@10 is tested.", "",
                  "| head | seed | stage 1 s | stage 2 s | best step | steps run | validation NDCG@10 | max/min a (test queries) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in payload["runs"]:
            v, m = r.get("validation") or {}, r.get("modulation") or {}
            st = r.get("stage_seconds") or [r["train_seconds"]]
            cells = [str(v["from_step"]), str(v["steps_run"]), f"{v['value']:.4f}"] if v else ["-"] * 3
            mod = f"{m['max_over_min']:.2f}" if m.get("max_over_min") else "-"
            lines.append("| " + " | ".join([r["head"], str(r["seed"]), f"{st[0]:.0f}", f"{st[1]:.0f}" if len(st) > 1 else "-",
                                            *cells, mod]) + " |")
        lines.append("")
    return lines + fusion_note(payload["results"]) + head_tables(payload["summary"], list(args.heads), order, METRICS, "ndcg@10",
                               baselines=("none", "adapter"))


if __name__ == "__main__":
    raise SystemExit(run_script(main))
