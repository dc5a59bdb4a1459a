"""Fine-tune setting for the dual encoder (image -> image, text -> image): the plug-in run, then every tower unlocked.

    python3 scripts/repro_finetune.py --modality cross                       # after scripts/sweep_heads.py --modality cross
    python3 scripts/repro_finetune.py --modality image --dataset tuxpaint
    python3 scripts/repro_finetune.py --modality cross --limit 80 --seeds 0 --plugin-max-steps 4 --max-steps 2 --out /tmp/smoke
    python3 scripts/repro_finetune.py --render results/repro_cross_finetune.json

A dual encoder's projections start random, so the towers are unlocked only once they are trained
(LiT, then fine-tuning). Stage 1 is the plug-in run of ``scripts/repro_plugin.py`` (towers locked,
the sweep's recipe for the row, corpus negatives, early stopping on a validation split carved from
the training data: its projections and head trained to convergence). Stage 2 unlocks every tower
(``--train all``: MiniLM and EfficientNet-Lite0 too) and trains the whole model on the same
training data for ``--epochs`` with ``--group-size - 1`` hard negatives mined each epoch by the
current model, at ``--lr`` (towers and projections) and ``--head-lr`` (heads), batch-norm
statistics kept (``--freeze-bn-stats``), on the same
validation split (same seed), evaluated every ``--eval-steps`` with early stopping; the best
validation model of stage 2 (its step 0 is stage 1's model) is tested. Every row (``none``, the
heads, the ``adapter`` control) runs both stages with the same settings.

Each (head, seed) run is one JSON under ``<out>/repro_<key>_finetune/`` (finished runs are not
redone); ``<out>/repro_<key>_finetune.json`` / ``.md`` gather them with the reference row.
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
from lsb_mm_experiments.plugin import (add_plugin_data_args, add_run_args, plugin_config, plugin_experiment,
                                       plugin_references)  # noqa: E402
from lsb_mm_experiments.reproduce import run_grid, run_script  # noqa: E402
from lsb_mm_experiments.statistics import head_tables, machine_line, summarize  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repro_plugin import setup  # noqa: E402

METRICS = ("ndcg@10", "recall@1", "recall@10")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plugin_data_args(ap)
    ap.add_argument("--heads", nargs="+", default=None, help="default: none slr llr clr adapter")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default=None, help="stage 1: the sweep summary (default: results/sweep_<key>.json)")
    ap.add_argument("--plugin-max-steps", type=int, default=600, help="stage 1: at most this many steps")
    ap.add_argument("--plugin-batch-size", type=int, default=64)
    ap.add_argument("--plugin-eval-steps", type=int, default=50, help="stage 1: validation every N steps (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=1, help="stage 2: epochs with every tower unlocked (default: %(default)s)")
    ap.add_argument("--max-steps", type=int, default=0, help="stage 2: cap on steps (0: --epochs)")
    ap.add_argument("--batch-size", type=int, default=32, help="stage 2 batch (default: %(default)s)")
    ap.add_argument("--group-size", type=int, default=2,
                    help="stage 2: passages per query, the positive + N-1 mined hard negatives (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1e-5, help="stage 2: towers and projections (default: %(default)s)")
    ap.add_argument("--head-lr", type=float, default=1e-4, help="stage 2: heads (default: %(default)s)")
    ap.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=True,
                    help="stage 2: keep EfficientNet's batch-norm statistics (default: on; batches of 32 stamps "
                         "otherwise shift them: validation NDCG@10 0.228 -> 0.091 in 10 steps at lr 1e-5)")
    ap.add_argument("--eval-steps", type=int, default=10, help="stage 2: validation every N steps (the split of stage 1)")
    add_run_args(ap, "runs/repro_<key>_finetune")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved(args.render, render)
    if args.modality == "text":
        ap.error("text: scripts/repro_text.py is the fine-tune setting (no projections to train first)")
    key, recipe = setup(ap, args, "finetune")
    t_start = time.perf_counter()
    exp = plugin_experiment(args, args.work)
    images = ImageFeatureCache(max_gb=8)
    rows = plugin_references(exp, images)
    stage1 = argparse.Namespace(model=exp.model, model_options=exp.model_options, batch_size=args.plugin_batch_size,
                                max_steps=args.plugin_max_steps, eval_steps=args.plugin_eval_steps, patience=args.patience,
                                val_fraction=args.val_fraction, vocab_size=args.vocab_size)

    def plugin(head: str, seed: int) -> lsb_mm.TrainConfig:
        r = recipe[head]
        return plugin_config(stage1, head, exp.train_file, os.path.join(args.work, "runs", f"{head}-seed{seed}-plugin"),
                             r["lr"], r["temperature"], r["weight_decay"], seed, args.modality, head_lr=r["head_lr"])

    def unlocked(head: str, seed: int, plugged: str) -> lsb_mm.TrainConfig:
        r = recipe[head]
        return lsb_mm.TrainConfig(model=plugged, overwrite=True, head=head, modality=args.modality, train="all", train_data=exp.train_file,
                                  symmetric=args.modality == "cross", val_fraction=args.val_fraction,
                                  eval_steps=args.eval_steps, patience=args.patience, epochs=args.epochs,
                                  max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                                  temperature=r["temperature"], weight_decay=r["weight_decay"],
                                  train_group_size=args.group_size, mine_negatives=args.group_size > 1, seed=seed,
                                  feature_cache_gb=0, freeze_bn_stats=args.freeze_bn_stats,
                                  output=os.path.join(args.work, "runs", f"{head}-seed{seed}"),
                                  log_steps=10, keep_checkpoints=1, show_progress_bar=False)

    grid, runs = run_grid(plugin, args.heads, args.seeds, exp.folders, feature_cache=images, then=unlocked,
                          runs_dir=os.path.join(args.out, f"repro_{key}_finetune"), log=lambda line: print(line, flush=True))
    rows.update(grid)
    payload = {"settings": vars(args), "key": key, "label": exp.label, "data": exp.info, "recipe": recipe,
               "references": [r for r in rows if r not in args.heads and "(head off)" not in r], "runs": runs,
               "summary": summarize(rows), "results": rows, "machine": machine_info(),
               "total_seconds": round(time.perf_counter() - t_start, 1)}
    write_benchmark(args.out, f"repro_{key}_finetune", payload, render(payload))
    return 0


def render(payload: dict) -> list:
    args, info = argparse.Namespace(**payload["settings"]), payload["data"]
    what = "Tux Paint captions -> stamps" if args.modality == "cross" else f"image -> image, {payload['key'][len('image-'):]}"
    references = payload["references"]
    order = references + list(args.heads) + [f"{h} (head off)" for h in args.heads if h != "none"]
    lines = [f"# {what}, fine-tune: {payload['label']}, every tower unlocked after the plug-in stage", "",
             machine_line(payload),
             f"Stage 1: the plug-in run (towers locked, the sweep's recipe per row: {args.recipe}, corpus negatives, at most "
             f"{args.plugin_max_steps} steps, batch {args.plugin_batch_size}, evaluation every "
             f"{getattr(args, 'plugin_eval_steps', 50)} steps). Stage 2: every tower unlocked, "
             f"{args.epochs} epoch(s){f' / {args.max_steps} steps' if args.max_steps else ''}, batch {args.batch_size}, "
             f"{args.group_size - 1} mined hard negative(s) per query, lr {args.lr:g} (towers, projections), head lr "
             f"{args.head_lr:g}{', batch-norm statistics frozen' if getattr(args, 'freeze_bn_stats', False) else ''}. "
             f"{info['train_examples']} training pairs, {args.val_fraction:g} of them (whole documents) "
             f"held out as validation per seed, the same split in both stages; evaluation every {args.eval_steps} steps, "
             f"patience {args.patience}; the best stage-2 model on validation NDCG@10 is tested. Seeds {args.seeds}.", "",
             "| head | seed | stage 1 s | stage 2 s | best stage-2 step | steps run | validation NDCG@10 | max/min a |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        v, m, st = r.get("validation") or {}, r.get("modulation") or {}, r["stage_seconds"]
        mod = f"{m['max_over_min']:.2f}" if m.get("max_over_min") else "-"
        lines.append(f"| {r['head']} | {r['seed']} | {st[0]:.0f} | {st[-1]:.0f} | {v.get('from_step', '-')} | "
                     f"{v.get('steps_run', '-')} | {v.get('value', float('nan')):.4f} | {mod} |")
    return lines + [""] + head_tables(payload["summary"], [h for h in args.heads if h != "none"], order, METRICS, "ndcg@10",
                                      baselines=("none", "adapter"))


if __name__ == "__main__":
    raise SystemExit(run_script(main))
