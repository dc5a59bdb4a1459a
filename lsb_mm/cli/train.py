"""``lsb-mm train``: contrastive training, one process or several (torchrun)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from lsb_mm.errors import InputError
from lsb_mm.cli.common import (_add_model_option, _head_choices, _pooling_choices)


TRAIN_EPILOG = """data formats (--train-data, --eval-data):
  x.jsonl            {"query": ..., "pos": [...], "neg": [...]} per line; items are texts or image paths
                     (relative to --image-root, default the file's folder), by --modality
  x.csv / x.tsv      caption,image pairs (--csv-caption-key, --csv-img-key); --modality cross
  folder/            images with caption sidecars (a.png + a.txt); --modality cross
  folder/class/img   a labelled image folder; --modality image (positives: same class)

examples:
  lsb-mm train --model open_clip:lsb-tiny-test --head slr --modality text \\
      --train-data pairs.jsonl --output runs/slr --max-steps 20 --batch-size 8
  lsb-mm train --model hf:/path/MiniLM --head llr --train-data pairs.jsonl --train-group-size 4 \\
      --mine-negatives --epochs 2 --output runs/llr --eval-data dev.jsonl --eval-steps 100
  lsb-mm train --nproc 2 --cross-device-negatives ...     (torchrun; gloo on CPU, nccl on GPU)

The trained model is saved to OUTPUT/final (load it with lsb_mm.load_model); checkpoints go to
OUTPUT/checkpoint-NNNNNN, the step log to OUTPUT/train_log.jsonl, run settings to OUTPUT/run_info.json.
"""


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from lsb_mm.training.config import TrainConfig

    d = TrainConfig(model="", train_data="", output="")
    for add in (_model_group, _data_group, _objective_group, _optimisation_group, _output_group):
        add(p, d)


def _model_group(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a packaged encoder (minilm, effnet-lite0, minilm+effnet-lite0), an "
                                                  "encoder name (open_clip:..., timm:..., hf:..., dual:...) or a saved "
                                                  "lsb-mm folder")
    g.add_argument("--head", default=d.head, choices=_head_choices(), help="head of a new model (default: %(default)s)")
    g.add_argument("--pooling", default=None, choices=_pooling_choices(), help="pooling of hf: encoders")
    _add_model_option(g)
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="visual words of a new image tower (default: %(default)s)")
    g.add_argument("--fit-codebook", type=int, default=d.fit_codebook,
                   help="fit visual words on N training images before training an image head on an unfitted "
                        "codebook (-1: up to 1000, 0: never; default: %(default)s)")
    g.add_argument("--fusion-q", action=argparse.BooleanOptionalAction, default=None, help="apply the head to queries (model default: yes)")
    g.add_argument("--fusion-p", action=argparse.BooleanOptionalAction, default=None, help="apply the head to documents (model default: no)")


def _data_group(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train-data", required=True, help="training data (see formats below)")
    g.add_argument("--modality", default=d.modality, choices=["text", "image", "cross"],
                   help="text->text, image->image, or text->image (default: %(default)s)")
    g.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    g.add_argument("--csv-img-key", default=d.csv_img_key, help="image column of CSV/TSV data (default: %(default)s)")
    g.add_argument("--csv-caption-key", default=d.csv_caption_key, help="caption column of CSV/TSV data (default: %(default)s)")
    g.add_argument("--skip-bad", action="store_true", help="skip bad rows and list them in OUTPUT/skipped.jsonl instead of stopping")
    g.add_argument("--workers", dest="num_workers", type=int, default=d.num_workers, help="data loading worker processes (default: %(default)s)")
    g.add_argument("--feature-cache-gb", type=float, default=d.feature_cache_gb,
                   help="memory for the features of a locked image tower, computed once per image and reused "
                        "every epoch (0 = off; default: %(default)s)")
    g.add_argument("--tower-cache-gb", type=float, default=d.tower_cache_gb,
                   help="plug-in fast path: memory for the outputs of each locked tower, computed once per distinct "
                        "training input before the first step; steps then skip tokenizer, image decoding and tower "
                        "(0 = run the towers every step; default: %(default)s)")
    g.add_argument("--tower-cache-dtype", default=d.tower_cache_dtype, choices=["float32", "float16"],
                   help="storage of cached hidden states (float16 halves their memory; default: %(default)s)")
    g.add_argument("--tower-cache-dir", default=d.tower_cache_dir, metavar="DIR",
                   help="keep cached hidden states on disk in a temporary folder under DIR (memory-mapped, removed "
                        "at the end) for training sets whose tower outputs do not fit --tower-cache-gb of memory")


def _objective_group(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("objective")
    g.add_argument("--train-group-size", type=int, default=d.train_group_size,
                   help="passages per query: 1 positive + N-1 hard negatives (default: %(default)s)")
    g.add_argument("--mine-negatives", action="store_true",
                   help="mine hard negatives each epoch with the current model (FAISS over the positives' pool)")
    g.add_argument("--mine-top-k", type=int, default=d.mine_top_k, help="mined negatives kept per query (default: %(default)s)")
    g.add_argument("--freeze-bn-stats", action="store_true",
                   help="keep batch-norm running statistics of trained towers fixed (eval mode; their affine weights "
                        "still train): small batches of unfamiliar images otherwise shift them at every step")
    g.add_argument("--corpus-negatives", action="store_true",
                   help="score every query against all training documents (exact softmax) instead of the batch's "
                        "passages; needs the document tower locked and cached (--train heads) and plain documents")
    g.add_argument("--temperature", type=float, default=None,
                   help="InfoNCE temperature (default: the recipe, see --lr)")
    g.add_argument("--symmetric", action="store_true", help="cross: add the image->text direction to the loss")
    g.add_argument("--cross-device-negatives", action="store_true",
                   help="with several processes, score every query against all processes' passages")


def _optimisation_group(p: argparse.ArgumentParser, d) -> None:
    from lsb_mm.training.recipes import FINE_TUNE

    g = p.add_argument_group("optimisation")
    g.add_argument("--train", default=d.train, choices=["heads", "all"], help="train the heads only, or the towers too (default: %(default)s)")
    g.add_argument("--lock-text", action="store_true", help="with --train all: keep the text tower frozen")
    g.add_argument("--lock-image", action="store_true", help="with --train all: keep the image tower frozen")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of AdamW (default: the recipe: with --train heads, the plug-in recipe swept "
                        "on validation for the modality and head, e.g. slr on text 1e-3; else the fine-tune default "
                        f"{FINE_TUNE['lr']:g}; `lsb-mm recipes` lists them)")
    g.add_argument("--head-lr", type=float, default=None, help="learning rate of the heads (default: --lr)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay of matrices (default: the recipe, see --lr)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default: %(default)s)")
    g.add_argument("--scheduler", default=d.scheduler, choices=["cosine", "linear", "constant"], help="decay after warm-up (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping, 0 = off (default: %(default)s)")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision on CUDA (auto: bf16 where supported); CPU runs fp32 (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="queries per process per micro-batch (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps; 0 = use --epochs (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs when --max-steps is 0 (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of model init, data order and sampling (default: %(default)s)")
    g.add_argument("--device", default=d.device, help="cpu, cuda, ... (default: cuda when available)")


def _output_group(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="run folder: final model, checkpoints, logs")
    g.add_argument("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps, and always at the end (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest checkpoints kept, 0 = all (default: %(default)s)")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue exactly from the latest checkpoint in --output, or from the given checkpoint folder")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output (its model, checkpoints and logs); without it (or --resume) "
                        "a folder that holds a run is refused")
    g.add_argument("--eval-data", default=None, help="held-out validation data (same formats): NDCG@k, MRR@k, Recall@k, "
                   "success@k in the log")
    g.add_argument("--eval-distractors", action="store_true",
                   help="with --eval-data: validation queries search their documents among every training document "
                        "too (as with --val-fraction), so that a small validation corpus does not saturate")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="hold out this share of the training examples as validation instead (whole positive documents; "
                        "they are searched among all training documents)")
    g.add_argument("--eval-steps", type=int, default=d.eval_steps, help="evaluate every N steps (and at step 0); 0 = at the end only")
    g.add_argument("--best-metric", default=d.best_metric,
                   help="validation metric that picks the best model (ndcg|mrr|recall|success @1|5|10; default: %(default)s)")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=d.keep_best,
                   help="with validation: OUTPUT/final is the best model on it (kept in OUTPUT/best), not the last "
                        "(default: yes)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="stop after N evaluations without a better validation metric (0 = never; default: %(default)s)")
    g.add_argument("--log-steps", type=int, default=d.log_steps, help="log every N steps (default: %(default)s)")
    g.add_argument("--nproc", type=int, default=1, help="launch N processes with torchrun (DDP) on this machine")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _without_nproc(argv: List[str]) -> List[str]:
    """``argv`` less its ``--nproc N`` / ``--nproc=N`` (or an abbreviation such as ``--npr 2``): each
    torchrun process trains; torchrun would also take ``--nproc=N`` for its own ``--nproc-per-node``."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        head, eq, _ = tok.partition("=")
        if head.startswith("--np") and "--nproc".startswith(head):
            skip = not eq
            continue
        out.append(tok)
    return out


def cmd_train(args) -> int:
    import dataclasses

    from lsb_mm.training.config import TrainConfig
    from lsb_mm.training.trainer import train

    if args.nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {args.nproc}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["show_progress_bar"] = not args.quiet
    values["model_options"] = dict(args.model_options or [])
    config = TrainConfig(**values)
    config.check()  # before any process starts
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "lsb_mm", *_without_nproc(args.argv)]
        return subprocess.call(cmd)
    final = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"final": final, "log": os.path.join(args.output, "train_log.jsonl")}))
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
    tr = sub.add_parser("train", help="contrastive training of heads (and towers): text, image or cross-modal",
                        description="Train LexSemBridge heads (and optionally the towers) with InfoNCE over in-batch "
                                    "passages and hard negatives, on one process or several (torchrun).",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EPILOG)
    _add_train_args(tr)
    tr.set_defaults(func=cmd_train)
