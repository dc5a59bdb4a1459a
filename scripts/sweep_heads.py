"""Choose each head's plug-in recipe on validation, never on the test tasks.

    python3 scripts/sweep_heads.py                        # text: man pages, all-MiniLM-L6-v2 locked
    python3 scripts/sweep_heads.py --modality image --dataset tuxpaint   # image -> image: Tux Paint stamps
    python3 scripts/sweep_heads.py --modality cross       # text -> image: Tux Paint captions -> stamps
    python3 scripts/sweep_heads.py --heads slr --lrs 1e-3 --pages 80 --max-steps 20   # a smoke run
    python3 scripts/sweep_heads.py --render results/sweep_text.json

Data (:func:`lsb_mm_experiments.plugin.plugin_experiment`), training part only: text, the man-page
experiment (one training query of every kind per training page: NAME line, keywords, pop-N
spans); image, crops -> their image and image -> same-class images of the training images
(Fashion-MNIST or Tux Paint); cross, the captions of the training stamps. ``--val-fraction`` of
the training examples (whole documents) is held out as validation; validation queries search
their document among all training documents. Every run: towers locked (``--train heads``; a dual
encoder's projections train with the heads), cached tower outputs, corpus negatives (exact
softmax over the training documents), AdamW, evaluation every ``--eval-steps`` with early
stopping (``--patience``); the run's score is its best validation NDCG@10, and its model there is
kept. Grid: head x lr x temperature x weight decay, one seed.

Each run is one JSON under ``<out>/sweep_<key>/`` (key: ``text``, ``cross``, ``image-<dataset>``;
a finished run is never redone: the sweep resumes); the summary ``<out>/sweep_<key>.json`` /
``.md`` lists every run and the winner per head. The held-out test tasks are built (with the
split of the reproductions) but never read here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lsb_mm  # noqa: E402
from lsb_mm_experiments.benchmarking import machine_info, render_saved, write_benchmark  # noqa: E402
from lsb_mm_experiments.plugin import (PLUGIN_HEADS, add_plugin_data_args, add_run_args, experiment_key,
                                       plugin_config, plugin_experiment, plugin_train_files)  # noqa: E402
from lsb_mm_experiments.reproduce import run_script  # noqa: E402
from lsb_mm.files import iter_jsonl, write_text  # noqa: E402

METRIC = "ndcg@10"


def run_name(head: str, lr: float, temperature: float, weight_decay: float, head_lr_scale: float = 1.0) -> str:
    return f"{head}_lr{lr:g}_t{temperature:g}_wd{weight_decay:g}" + (f"_h{head_lr_scale:g}" if head_lr_scale != 1 else "")


def summarise_log(path: str) -> dict:
    """Best validation record, the step-0 (untrained) record, steps run, stop reason, modulation."""
    log = [rec for _, rec in iter_jsonl(path)]
    evals = [r for r in log if "eval" in r]
    best = max(evals, key=lambda r: r["eval"][METRIC])
    losses = [r for r in log if "loss" in r]
    return {"best_step": best["step"], "best": best["eval"], "best_modulation": best.get("modulation"),
            "start": evals[0]["eval"] if evals and evals[0]["step"] == 0 else None,
            "steps_run": max((r["step"] for r in losses), default=0),
            "early_stop": next((r["early_stop"] for r in evals if "early_stop" in r), None),
            "final_loss": losses[-1]["loss"] if losses else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plugin_data_args(ap)
    ap.add_argument("--heads", nargs="+", default=None, help="default: slr llr clr adapter (text); none too (image, cross)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.02])
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[0.01])
    ap.add_argument("--head-lr-scales", type=float, nargs="+", default=[1.0],
                    help="head lr = lr x scale (image, cross: the projections keep lr; `none` runs scale 1 only; "
                         "default: %(default)s, one lr for everything)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--eval-steps", type=int, default=50)
    add_run_args(ap, "runs/sweep_<key>")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    args.heads = args.heads or PLUGIN_HEADS[args.modality]
    t_start = time.perf_counter()
    key = experiment_key(args)
    args.work = args.work or f"runs/sweep_{key}"
    exp = plugin_experiment(args, args.work)
    train_file, eval_data = plugin_train_files(exp, args.work, args.seed, args.val_fraction)
    data_info = exp.info
    del exp
    runs_dir = os.path.join(args.out, f"sweep_{key}")
    os.makedirs(runs_dir, exist_ok=True)
    shared = None
    order = sorted(args.heads, key=lambda h: h != "llr")  # LLR first: its cache keeps hidden states, all reuse it
    for head, lr, t, wd, scale in itertools.product(order, args.lrs, args.temperatures, args.weight_decays,
                                                    args.head_lr_scales):
        name = run_name(head, lr, t, wd, scale)
        path = os.path.join(runs_dir, f"{name}.json")
        if os.path.isfile(path) or (head == "none" and scale != 1):  # no head: nothing for the scale to scale
            continue
        cfg = plugin_config(args, head, train_file, os.path.join(args.work, "runs", name), lr, t, wd, args.seed, args.modality,
                            eval_data, head_lr=lr * scale)
        t0 = time.perf_counter()
        trainer = lsb_mm.Trainer(cfg, tower_caches=shared)
        trainer.train()
        shared = shared or (trainer.tower_caches if head == "llr" else None)
        rec = {"name": name, "head": head, "lr": lr, "head_lr": lr * scale, "temperature": t, "weight_decay": wd, "seconds": round(time.perf_counter() - t0, 1),
               "validation_examples": len(trainer.eval_data), "training_examples": len(trainer.data),
               **summarise_log(os.path.join(cfg.output, "train_log.jsonl"))}
        write_text(path, json.dumps(rec, indent=2))
        print(f"{name}: val {METRIC} {rec['best'][METRIC]:.4f} at step {rec['best_step']} ({rec['seconds']:.0f} s)", flush=True)
    runs = [json.load(open(os.path.join(runs_dir, f))) for f in sorted(os.listdir(runs_dir)) if f.endswith(".json")]
    runs = [r for r in runs if r["head"] in args.heads]
    winners = {h: max((r for r in runs if r["head"] == h), key=lambda r: r["best"][METRIC])["name"] for h in args.heads
               if any(r["head"] == h for r in runs)}
    start = next((r["start"] for r in runs if r.get("start")), None)
    payload = {"settings": vars(args), "key": key, "data": data_info, "metric": METRIC, "untrained": start, "runs": runs,
               "winners": winners, "machine": machine_info(), "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, f"sweep_{key}", payload, render(payload))
    return 0


def render(payload: dict) -> list:
    s = argparse.Namespace(**payload["settings"])
    m = payload["machine"]
    key, d = payload.get("key", s.modality), payload["data"]
    if s.modality == "text":
        data = f"{d['train_pages']} training pages, {d['train_examples']} training queries (every kind per page)"
        start = "the locked encoder alone"
    else:
        data = (f"{d['train']} training stamps, {d['train_examples']} caption -> stamp pairs" if s.modality == "cross" else
                f"{d['train_examples']} training pairs ({d.get('crops_per_image', 1)} crop(s) -> image per training "
                "image, image -> same-class images)")
        data += f"; dual encoder, towers locked, {s.embed_dim}-d projections trained with the heads, {s.vocab_size} visual words"
        start = "random projections"
    lines = [f"# Head sweep ({key}, plug-in: towers locked), chosen on validation only", "",
             f"Machine: {m.get('cpu') or m.get('machine')} ({m.get('threads')} threads); {payload['total_seconds']:.0f} s in "
             f"all (this invocation). {data}; {s.val_fraction:g} of the examples (whole documents) held out as "
             f"validation; batch {s.batch_size}, corpus negatives, evaluation every {s.eval_steps} steps, patience "
             f"{s.patience}, at most {s.max_steps} steps, seed {s.seed}.", ""]
    if payload.get("untrained"):
        u = payload["untrained"]
        lines += [f"Untrained ({start}) on validation: NDCG@10 {u['ndcg@10']:.4f}, "
                  f"R@1 {u['recall@1']:.4f}, R@10 {u['recall@10']:.4f}.", ""]
    lines += ["| head | lr | head lr | temperature | weight decay | val NDCG@10 | val R@1 | val R@10 | best step | "
              "steps run | max/min a | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(payload["runs"], key=lambda r: (r["head"], -r["best"]["ndcg@10"])):
        mod = r.get("best_modulation") or {}
        star = " **(winner)**" if payload["winners"].get(r["head"]) == r["name"] else ""
        lines.append(f"| {r['head']}{star} | {r['lr']:g} | {r.get('head_lr', r['lr']):g} | {r['temperature']:g} | {r['weight_decay']:g} | "
                     f"{r['best']['ndcg@10']:.4f} | {r['best']['recall@1']:.4f} | {r['best']['recall@10']:.4f} | "
                     f"{r['best_step']} | {r['steps_run']} | {mod.get('max_over_min', float('nan')):.2f} | {r['seconds']:.0f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(run_script(main))
