"""Text reproduction, plug-in setting: all-MiniLM-L6-v2 locked, heads trained on cached tower outputs.

    python3 scripts/sweep_heads.py                   # first: each head's recipe, chosen on validation
    python3 scripts/repro_text_plugin.py             # then: 3 seeds x (slr, llr, clr, adapter) with those recipes
    python3 scripts/repro_text_plugin.py --pages 80 --seeds 0 --max-steps 20   # a smoke run
    python3 scripts/repro_text_plugin.py --render results/repro_text_plugin.json

The paper's claim is plug-and-play: heads added "without modifying the backbone encoder". Here the
encoder is locked, so ``none`` is the untuned encoder itself, and each head's row is compared with
it and with ``adapter``, a residual linear query map trained the same way (is it the lexical signal,
or any adaptation at all?). Data and split: those of ``scripts/sweep_heads.py`` (man pages, one
training query of every kind per training page; held-out pages as BEIR tasks ``query``,
``keyword``, ``pop-16/32/64/128``). Each run: ``--train heads``, corpus negatives, the head's lr /
temperature / weight decay from the sweep's winner (``--recipe``), a validation split carved from
the training queries (seeded by the run's seed), evaluation every ``--eval-steps`` with early
stopping; the best model on validation is the one tested. The test tasks are read only here.

Each (head, seed) run is one JSON under ``<out>/repro_text_plugin/`` (finished runs are not redone);
``<out>/repro_text_plugin.json`` / ``.md`` gather them with the reference rows (untuned, BM25).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm.pretrained import text_model_or_minilm  # noqa: E402
from lsb_mm.datasets.manpage_experiment import build_manpage_experiment  # noqa: E402
from lsb_mm.evaluation import CorpusCache  # noqa: E402
from lsb_mm.files import iter_jsonl, write_text  # noqa: E402
from lsb_mm.reproduce import (bm25_results, head_tables, machine_line, plugin_text_config, query_modulation,  # noqa: E402
                              summarize)

METRICS = ("ndcg@10", "recall@1", "recall@10")


def recipes(path: str, heads) -> dict:
    """Each head's winning (lr, temperature, weight decay) from a sweep summary."""
    with open(path, encoding="utf-8") as f:
        sweep = json.load(f)
    by_name = {r["name"]: r for r in sweep["runs"]}
    out = {}
    for h in heads:
        if h not in sweep["winners"]:
            raise SystemExit(f"{path}: the sweep has no run of head {h!r}; run scripts/sweep_heads.py --heads {h}")
        w = by_name[sweep["winners"][h]]
        out[h] = {"lr": w["lr"], "temperature": w["temperature"], "weight_decay": w["weight_decay"], "sweep_run": w["name"],
                  "validation_ndcg@10": w["best"]["ndcg@10"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="text encoder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pages", type=int, default=0, help="first N man pages only (0: all)")
    ap.add_argument("--heads", nargs="+", default=["slr", "llr", "clr", "adapter"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default="results/sweep_text.json", help="the sweep summary whose winners set lr etc.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--work", default="runs/repro_text_plugin", help="data, models and logs")
    ap.add_argument("--out", default="results")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown of a saved result JSON")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    label, args.model = text_model_or_minilm(args.model)
    recipe = recipes(args.recipe, args.heads)
    t_start = time.perf_counter()
    untuned = lsb_mm.create_model(args.model, head="none")
    train_file, folders, data_info = build_manpage_experiment(args.work, untuned, pages=args.pages, per_page="all")
    docs = CorpusCache()
    rows = {"untuned": [lsb_mm.evaluate(untuned, folders, show_progress_bar=False, corpus_cache=docs)],
            "BM25": [bm25_results(folders)]}
    runs_dir = os.path.join(args.out, "repro_text_plugin")
    os.makedirs(runs_dir, exist_ok=True)
    shared = None
    for seed in args.seeds:
        for head in sorted(args.heads, key=lambda h: h != "llr"):  # LLR first: its tower cache serves everyone
            path = os.path.join(runs_dir, f"{head}-seed{seed}.json")
            if os.path.isfile(path):
                continue
            r = recipe[head]
            cfg = plugin_text_config(args, head, train_file, os.path.join(args.work, "runs", f"{head}-seed{seed}"),
                                     r["lr"], r["temperature"], r["weight_decay"], seed)
            t0 = time.perf_counter()
            trainer = lsb_mm.Trainer(cfg, tower_caches=shared)
            final = trainer.train()
            shared = shared or (trainer.tower_caches if head == "llr" else None)
            del trainer
            t_train = time.perf_counter() - t0
            model = lsb_mm.load_model(final)
            res = lsb_mm.evaluate(model, folders, show_progress_bar=False, corpus_cache=docs)
            log = [rec for _, rec in iter_jsonl(os.path.join(cfg.output, "train_log.jsonl"))]
            done = next(rec["final"] for rec in log if "final" in rec)
            run = {"head": head, "seed": seed, "recipe": r, "train_seconds": round(t_train, 1), "best_step": done["from_step"],
                   "validation": {"metric": done["metric"], "value": done["value"]},
                   "steps_run": max(rec["step"] for rec in log if "loss" in rec),
                   "modulation": query_modulation(model, folders), "result": res}
            write_text(path, json.dumps(run, indent=2))
            print(f"{head} seed {seed}: {t_train:.0f} s, best step {run['best_step']}; " +
                  ", ".join(f"{t} {m['metrics']['ndcg@10']:.3f}" for t, m in res["tasks"].items()), flush=True)
    runs = [json.load(open(os.path.join(runs_dir, f"{h}-seed{s}.json"))) for s in args.seeds for h in args.heads]
    for run in runs:
        rows.setdefault(run["head"], []).append(run["result"])
    payload = {"settings": vars(args), "label": label, "data": data_info, "recipe": recipe,
               "runs": [{k: v for k, v in run.items() if k != "result"} for run in runs],
               "summary": summarize(rows), "results": rows, "machine": machine_info(),
               "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, "repro_text_plugin", payload, render(payload))
    return 0


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    order = ["untuned", "BM25"] + list(args.heads)
    lines = [f"# Text, plug-in: {payload.get('label', 'all-MiniLM-L6-v2')} locked, heads trained on it "
             f"(held-out {info['test_pages']} man pages)", "", machine_line(payload),
             f"Training: {info['train_examples']} queries from {info['train_pages']} training pages (every kind per page), "
             f"{args.val_fraction:g} of them (whole pages) held out as validation per seed; corpus negatives; batch "
             f"{args.batch_size}; at most {args.max_steps} steps, evaluation every {args.eval_steps}, patience "
             f"{args.patience}; the best model on validation NDCG@10 is tested. `untuned` is the locked encoder "
             f"(plug-in `none`); `adapter` is the linear control. Seeds {args.seeds}; mean ± std over seeds.", "",
             "Recipes (the sweep's winners on validation):", "",
             "| head | lr | temperature | weight decay | validation NDCG@10 in the sweep |", "|---|---:|---:|---:|---:|"]
    for h, r in payload["recipe"].items():
        lines.append(f"| {h} | {r['lr']:g} | {r['temperature']:g} | {r['weight_decay']:g} | {r['validation_ndcg@10']:.4f} |")
    lines += ["", "Per run: best validation step and the modulation strength on the test queries (median max(a)/min(a); "
              "entropy of a / log d):", "", "| head | seed | best step | steps run | train s | max/min a | entropy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        m = r.get("modulation") or {}
        lines.append(f"| {r['head']} | {r['seed']} | {r['best_step']} | {r['steps_run']} | {r['train_seconds']:.0f} | "
                     f"{m.get('max_over_min', float('nan')):.3f} | {m.get('entropy', float('nan')):.4f} |")
    heads = list(args.heads)
    return lines + [""] + head_tables(payload["summary"], heads, order, METRICS, "ndcg@10", baselines=("untuned", "adapter"))


if __name__ == "__main__":
    raise SystemExit(main())
