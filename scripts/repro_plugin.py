"""Plug-in reproductions: towers locked, heads trained on cached tower outputs, 3 seeds, tested once.

    python3 scripts/sweep_heads.py                   # first: each head's recipe, chosen on validation
    python3 scripts/repro_plugin.py                  # then: text, 3 seeds x (slr, llr, clr, adapter) with those recipes
    python3 scripts/repro_plugin.py --modality image --dataset tuxpaint   # (after the image sweep of that dataset)
    python3 scripts/repro_plugin.py --modality cross
    python3 scripts/repro_plugin.py --pages 80 --seeds 0 --max-steps 20 --out /tmp/smoke   # a smoke run
    python3 scripts/repro_plugin.py --render results/repro_text_plugin.json

The paper's claim is plug-and-play: heads added "without modifying the backbone encoder". Here the
towers are locked. Text: ``none`` is the untuned encoder itself (row ``untuned``). Image and cross:
the dual encoder's projections train, so ``none`` is the projection trained alone, and each head
row trains the projection with its head. Every head row is compared with ``none`` / ``untuned``
and with ``adapter``, a residual linear query map trained the same way (is it the lexical signal,
or any adaptation at all?). Data and split: those of ``scripts/sweep_heads.py``
(:func:`lsb_mm_experiments.plugin.plugin_experiment`). Each run: ``--train heads``, corpus negatives, the
row's lr / temperature / weight decay from the sweep's winner (``--recipe``, default
``results/sweep_<key>.json``), a validation split carved from the training data (seeded by the
run's seed), evaluation every ``--eval-steps`` with early stopping; the best model on validation
is the one tested. The test tasks are read only here.

Each (head, seed) run is one JSON under ``<out>/repro_<key>_plugin/`` (finished runs are not
redone); ``<out>/repro_<key>_plugin.json`` / ``.md`` gather them with the reference rows.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm.training.feature_cache import ImageFeatureCache  # noqa: E402
from lsb_mm.evaluation.evaluate import CorpusCache  # noqa: E402
from lsb_mm.files import write_text  # noqa: E402
from lsb_mm_experiments.plugin import (PLUGIN_HEADS, add_plugin_data_args, add_run_args, experiment_key, fusion_note,
                                       plugin_config, plugin_experiment, plugin_references, plugin_train_files,
                                       text_references, update_references)  # noqa: E402
from lsb_mm_experiments.reproduce import query_modulation, read_run_record, run_script, validation_record  # noqa: E402
from lsb_mm_experiments.statistics import head_tables, machine_line, summarize  # noqa: E402

METRICS = ("ndcg@10", "recall@1", "recall@10")


def recipes(path: str, heads) -> dict:
    """Each head's winning (lr, temperature, weight decay) from a sweep summary."""
    if not os.path.isfile(path):
        raise SystemExit(f"--recipe {path}: no such sweep summary; run scripts/sweep_heads.py for this data first "
                         "(it writes results/sweep_<key>.json)")
    with open(path, encoding="utf-8") as f:
        sweep = json.load(f)
    by_name = {r["name"]: r for r in sweep.get("runs", [])}
    missing = [h for h in heads if h in sweep.get("winners", {}) and sweep["winners"][h] not in by_name]
    if missing:
        raise SystemExit(f"{path}: the winners of {missing} are not among its runs; re-run scripts/sweep_heads.py")
    out = {}
    for h in heads:
        if h not in sweep["winners"]:
            raise SystemExit(f"{path}: the sweep has no run of head {h!r}; run scripts/sweep_heads.py --heads {h}")
        w = by_name[sweep["winners"][h]]
        out[h] = {"lr": w["lr"], "head_lr": w.get("head_lr", w["lr"]), "temperature": w["temperature"], "weight_decay": w["weight_decay"], "sweep_run": w["name"],
                  "validation_ndcg@10": w["best"]["ndcg@10"]}
    return out


def setup(ap, args, setting: str) -> tuple:
    """``(key, recipes)`` of a reproduction (``setting``: ``plugin`` or ``finetune``): checks
    ``--val-fraction`` and fills the defaults of ``--heads``, ``--recipe`` and ``--work``."""
    if not 0 < args.val_fraction < 1:
        ap.error(f"--val-fraction must be in (0, 1): every run stops early on validation (got {args.val_fraction})")
    key = experiment_key(args)
    args.heads = args.heads or PLUGIN_HEADS[args.modality]
    args.recipe = args.recipe or f"results/sweep_{'text' if key == 'text-docs' else key}.json"
    args.work = args.work or f"runs/repro_{key}_{setting}"
    return key, recipes(args.recipe, args.heads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plugin_data_args(ap)
    ap.add_argument("--heads", nargs="+", default=None, help="default: slr llr clr adapter (text); none too (image, cross)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default=None, help="the sweep summary whose winners set lr etc. (default: results/sweep_<key>.json)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--eval-steps", type=int, default=50)
    add_run_args(ap, "runs/repro_<key>_plugin")
    ap.add_argument("--update-references", metavar="JSON",
                    help="text: re-compute the reference rows (untuned, BM25 and their fusions) of a saved result on its "
                         "rebuilt tasks, then re-write it (no training)")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    if args.update_references:
        return update_references(args.update_references, saved_text_references, render)
    key, recipe = setup(ap, args, "plugin")
    t_start = time.perf_counter()
    exp = plugin_experiment(args, args.work)
    docs = CorpusCache()
    images = ImageFeatureCache(max_gb=8) if args.modality != "text" else None
    rows = plugin_references(exp, images, docs)
    runs_dir = os.path.join(args.out, f"repro_{key}_plugin")
    os.makedirs(runs_dir, exist_ok=True)
    shared = None
    for seed in args.seeds:
        for head in sorted(args.heads, key=lambda h: h != "llr"):  # LLR first: its tower cache serves everyone
            path = os.path.join(runs_dir, f"{head}-seed{seed}.json")
            r = recipe[head]
            train_file, eval_data = plugin_train_files(exp, args.work, seed, args.val_fraction)
            cfg = plugin_config(args, head, train_file, os.path.join(args.work, "runs", f"{head}-seed{seed}"),
                                r["lr"], r["temperature"], r["weight_decay"], seed, args.modality, eval_data, r["head_lr"])
            if read_run_record(path, cfg) is not None:
                continue
            t0 = time.perf_counter()
            trainer = lsb_mm.Trainer(cfg, tower_caches=shared)
            final = trainer.train()
            shared = shared or (trainer.tower_caches if head == "llr" else None)
            del trainer
            t_train = time.perf_counter() - t0
            model = lsb_mm.load_model(final)
            with images.attach(model) if images is not None else contextlib.nullcontext():
                res = lsb_mm.evaluate(model, exp.folders, show_progress_bar=False, corpus_cache=docs)
                modulation = query_modulation(model, exp.folders)
            done = validation_record(cfg.output)
            run = {"head": head, "seed": seed, "recipe": r, "train_seconds": round(t_train, 1), "best_step": done["from_step"],
                   "validation": {"metric": done["metric"], "value": done["value"]}, "steps_run": done["steps_run"],
                   "modulation": modulation, "config": json.loads(json.dumps(dataclasses.asdict(cfg))), "result": res}
            write_text(path, json.dumps(run, indent=2))
            print(f"{key} {head} seed {seed}: {t_train:.0f} s, best step {run['best_step']}; " +
                  ", ".join(f"{t} {m['metrics']['ndcg@10']:.3f}" for t, m in res["tasks"].items()), flush=True)
    runs = [json.load(open(os.path.join(runs_dir, f"{h}-seed{s}.json"), encoding="utf-8")) for s in args.seeds for h in args.heads]
    for run in runs:
        run.pop("config", None)
    for run in runs:
        rows.setdefault(run["head"], []).append(run["result"])
    payload = {"settings": vars(args), "key": key, "label": exp.label, "data": exp.info, "recipe": recipe,
               "references": [r for r in rows if r not in args.heads],
               "runs": [{k: v for k, v in run.items() if k != "result"} for run in runs],
               "summary": summarize(rows), "results": rows, "machine": machine_info(),
               "total_seconds": round(time.perf_counter() - t_start, 1)}
    if images is not None:
        payload["feature_cache"] = images.stats()
    write_benchmark(args.out, f"repro_{key}_plugin", payload, render(payload))
    return 0


def saved_text_references(payload: dict) -> dict:
    """The reference rows of a saved text plug-in result, on its tasks rebuilt from its settings."""
    # results older than --modality are text; the extra training data is not needed for the references
    args = argparse.Namespace(**{"modality": "text", **payload["settings"], "extra_docs": None})
    if args.modality != "text":
        raise SystemExit("--update-references: only text results have BM25 / hybrid reference rows")
    exp = plugin_experiment(args, args.work or f"runs/repro_{payload.get('key', 'text')}_plugin")
    return text_references(exp.untuned, exp.folders, exp.info["train_tasks"])


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    modality, key = getattr(args, "modality", "text"), payload.get("key", "text")
    references = payload.get("references", ["untuned", "BM25"])
    order = references + list(args.heads)
    if modality == "text":
        title = (f"# Text, plug-in: {payload.get('label', 'all-MiniLM-L6-v2')} locked, heads trained on it "
                 f"(held-out {info['test_pages']} man pages)")
        data = (f"Training: {info['train_examples']} queries from {info['train_pages']} training pages (every kind per "
                "page)")
        if info.get("extra"):
            x = info["extra"]
            data += (f", plus {x['train_examples']} queries from {x['sections']} documentation sections "
                     f"({', '.join(x['packages'])}: section title -> body, every kind per section; training side only, "
                     "validation is carved from the man pages)")
        base, baselines = "`untuned` is the locked encoder (plug-in `none`)", ("untuned", "adapter")
    else:
        what = "Tux Paint captions -> stamps" if modality == "cross" else f"image -> image, {key[len('image-'):]}"
        title = f"# {what}, plug-in: {payload['label']}, towers locked ({info['test'] if 'test' in info else '?'} held-out)"
        data = (f"Training: {info['train_examples']} pairs from the training {'stamps' if modality == 'cross' else 'images'}; "
                f"{args.embed_dim}-d projections trained with the heads, {args.vocab_size} visual words")
        base, baselines = f"`none` trains the projections alone; `{references[0]}` is the reference", ("none", "adapter")
    lines = [title, "", machine_line(payload),
             f"{data}, {args.val_fraction:g} of them (whole documents) held out as validation per seed; corpus "
             f"negatives; batch {args.batch_size}; at most {args.max_steps} steps, evaluation every {args.eval_steps}, "
             f"patience {args.patience}; the best model on validation NDCG@10 is tested. {base}; `adapter` is the "
             f"linear control. Seeds {args.seeds}; mean ± std over seeds.", "",
             "Recipes (the sweep's winners on validation):", "",
             "| head | lr | head lr | temperature | weight decay | validation NDCG@10 in the sweep |",
             "|---|---:|---:|---:|---:|---:|"]
    for h, r in payload["recipe"].items():
        lines.append(f"| {h} | {r['lr']:g} | {r.get('head_lr', r['lr']):g} | {r['temperature']:g} | {r['weight_decay']:g} | {r['validation_ndcg@10']:.4f} |")
    lines += ["", "Per run: best validation step and the modulation strength on the test queries (median max(a)/min(a); "
              "entropy of a / log d):", "", "| head | seed | best step | steps run | train s | max/min a | entropy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        m = r.get("modulation") or {}
        lines.append(f"| {r['head']} | {r['seed']} | {r['best_step']} | {r['steps_run']} | {r['train_seconds']:.0f} | "
                     f"{m.get('max_over_min', float('nan')):.3f} | {m.get('entropy', float('nan')):.4f} |")
    heads = [h for h in args.heads if h not in baselines] + [h for h in args.heads if h in baselines and h != baselines[0]]
    return lines + [""] + fusion_note(payload["results"]) + head_tables(payload["summary"], heads, order, METRICS, "ndcg@10",
                                                                       baselines=baselines)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
