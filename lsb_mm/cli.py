"""The ``lsb-mm`` command line. User mistakes print one line on stderr and exit 2."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import List, Optional

import numpy as np

from ._version import __version__
from .errors import InputError, LSBError, user_message
from .files import atomic_write, iter_jsonl, iter_lines, write_text

log = logging.getLogger("lsb_mm")

EPILOG = """examples:
  lsb-mm encode --model open_clip:lsb-tiny-test --head slr --texts queries.txt --role query --output q.npy
  lsb-mm encode --model runs/my-model --images photos/ --output docs.npy
  lsb-mm encode --model hf:sentence-transformers/all-MiniLM-L6-v2 --head none --texts passages.txt --output p.npy
  lsb-mm encode --model timm:convnext_tiny.fb_in1k --pretrained true --head none --images photos/ --output i.npy
"""


def _read_texts(path: str) -> List[str]:
    """One text per line (.txt) or a JSONL file whose lines are strings or objects with a 'text' field."""
    if not os.path.isfile(path):
        raise InputError(f"--texts {path}: no such file")
    texts: List[str] = []
    if path.endswith(".jsonl"):
        for n, obj in iter_jsonl(path):
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise InputError(f"{path}:{n}: expected a string or an object with a string 'text' field")
            texts.append(text)
    else:
        for n, line in iter_lines(path):
            line = line.rstrip("\r\n")
            if not line.strip():
                raise InputError(f"{path}:{n}: empty line (one text per line is expected)")
            texts.append(line)
    if not texts:
        raise InputError(f"--texts {path}: the file holds no text")
    return texts


def _model_option(text: str):
    """``KEY=VALUE`` -> (key, value); the value is read as JSON when it parses (numbers, objects), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    from .factory import reserved_options

    if key in reserved_options():
        raise argparse.ArgumentTypeError(f"{key!r} is not a backbone option: it has its own flag or setting (--{key.replace('_', '-')})")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _fusion_arg(text: str):
    """``rrf`` or a dense weight in [0, 1] (``--hybrid``)."""
    if text == "rrf":
        return text
    try:
        w = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rrf or a weight in [0, 1], got {text!r}") from None
    if not 0 <= w <= 1:
        raise argparse.ArgumentTypeError(f"the dense weight must be in [0, 1], got {w}")
    return w


def _add_model_option(p) -> None:
    p.add_argument("--model-option", dest="model_options", type=_model_option, action="append", default=None, metavar="KEY=VALUE",
                   help="an option of a new model, repeatable; VALUE is JSON or text, e.g. embed_dim=256, img_size=160, "
                        "image_options='{\"weights\": \"lite0.pth\"}' (see lsb_mm.create_model)")


def _head_choices(with_none: bool = True) -> List[str]:
    """Head kinds: the built-in ones, and every head registered with ``lsb_mm.heads.register_head``
    when that registry is loaded (the parser does not load it: ``--help`` imports no torch)."""
    from .names import HEAD_KINDS

    heads = sys.modules.get(f"{__package__}.heads")
    kinds = set(HEAD_KINDS) | set(heads.HEADS if heads is not None else ())
    return sorted(k for k in kinds if with_none or k != "none")


def _pooling_choices() -> List[str]:
    """Pooling modes of ``hf:`` text encoders (``auto``: the folder's sentence-transformers setting, else cls)."""
    from .names import POOLINGS

    return ["auto", *POOLINGS]


def _add_model_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    p.add_argument("--model", required=True, action="append" if multiple else "store",
                   help="a saved lsb-mm folder, a packaged encoder with real weights (minilm, effnet-lite0, "
                        "minilm+effnet-lite0), or an encoder name: hf:<org>/<name>[@revision] or hf:<folder>, "
                        "open_clip:<config> (with --pretrained <tag>), open_clip:hf-hub:<org>/<name>, "
                        "open_clip:local-dir:/path, timm:<arch>[.<tag>] (with --pretrained true); hub names download "
                        "into the Hugging Face cache, or come from it offline" + (" (repeat to compare models; also bm25 for BM25 alone, and "
                                                      "hybrid:<model> for a model fused with BM25, see --fusion)"
                                                      if multiple else ""))
    p.add_argument("--head", default="clr", choices=_head_choices(),
                   help="head for a new model built from an encoder name (ignored for saved folders; default: clr)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip: a pretrained tag (e.g. laion2b_s34b_b79k) or weights file; timm: true to load "
                        "timm's weights of <arch>.<tag>")
    p.add_argument("--pooling", default=None, choices=_pooling_choices(), help="pooling of hf: text encoders")
    _add_model_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _load(args):
    import torch

    from .factory import create_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return create_model(**_model_spec(args), device=device)


def cmd_encode(args) -> int:
    from .images import list_image_files

    if os.path.isdir(args.output):
        raise InputError(f"--output {args.output} is a folder; give the path of the .npy file to write")
    model = _load(args)
    t0 = time.perf_counter()
    if args.texts:
        items = _read_texts(args.texts)
        emb = model.encode_text(items, role=args.role, batch_size=args.batch_size,
                                show_progress_bar=not args.quiet, enhance=not args.no_enhance)
        rows = [{"row": i, "text": t} for i, t in enumerate(items)]
    else:
        items = list_image_files(args.images)
        if not items:
            raise InputError(f"--images {args.images}: no image files found")
        emb = model.encode_image(items, role=args.role, batch_size=args.batch_size, num_workers=args.workers,
                                 show_progress_bar=not args.quiet, enhance=not args.no_enhance)
        rows = [{"row": i, "path": p} for i, p in enumerate(items)]
    dt = time.perf_counter() - t0
    out = args.output
    with atomic_write(out, "wb") as f:
        np.save(f, emb.astype(np.float32))
    rows_path = os.path.splitext(out)[0] + ".rows.jsonl"
    write_text(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"output": out, "rows": rows_path, "count": int(emb.shape[0]), "dim": int(emb.shape[1]),
               "seconds": round(dt, 3), "per_second": round(emb.shape[0] / max(dt, 1e-9), 1),
               "model": args.model, "fingerprint": model.fingerprint(), "role": args.role, "enhance": not args.no_enhance}
    print(json.dumps(summary))
    return 0


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
    from .recipes import FINE_TUNE
    from .train_config import TrainConfig

    d = TrainConfig(model="", train_data="", output="")
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
    g = p.add_argument_group("data")
    g.add_argument("--train-data", required=True, help="training data (see formats below)")
    g.add_argument("--modality", default=d.modality, choices=["text", "image", "cross"],
                   help="text->text, image->image, or text->image (default: %(default)s)")
    g.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    g.add_argument("--csv-img-key", default=d.csv_img_key, help="image column of CSV/TSV data (default: %(default)s)")
    g.add_argument("--csv-caption-key", default=d.csv_caption_key, help="caption column of CSV/TSV data (default: %(default)s)")
    g.add_argument("--skip-bad", action="store_true", help="skip bad rows and list them in OUTPUT/skipped.jsonl instead of stopping")
    g.add_argument("--workers", type=int, default=d.workers, help="data loading worker processes (default: %(default)s)")
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

    from .trainer import TrainConfig, train

    if args.nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {args.nproc}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["show_progress"] = not args.quiet
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


def cmd_index(args) -> int:
    from .pipeline import build_index

    kind = next(k for k in ("images", "corpus", "csv", "parquet", "tar") if getattr(args, k) is not None)
    spec = _model_spec(args)
    index = build_index(spec.pop("name"), getattr(args, kind), args.output, kind=kind, engine=args.engine,
                        factory=args.factory, bm25=args.bm25, max_memory=args.max_index_memory,
                        target_recall=args.target_recall, device=args.index_device, batch_size=args.batch_size,
                        workers=args.workers, shard_size=args.shard_size, embeddings=args.embeddings,
                        embedding_dtype=args.embedding_dtype, replicas=args.replicas, address=args.address,
                        overwrite=args.overwrite, shard=args.shard, skip_bad=args.skip_bad, image_root=args.image_root,
                        csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key, model_options=spec,
                        model_device=args.device, show_progress_bar=not args.quiet)
    print(json.dumps(index.build_report))
    return 0


def _model_spec(args) -> dict:
    """What :func:`lsb_mm.create_model` needs to build the model of ``args`` again (in a worker)."""
    opts = dict(args.model_options or [])
    if args.pooling:
        opts["pooling"] = args.pooling
    return {"name": args.model, "head": args.head, "pretrained": args.pretrained, **opts}


def cmd_search(args) -> int:
    t = [time.perf_counter()]
    from .index import Index

    if args.hybrid is not None and args.text is None:
        raise InputError("--hybrid fuses BM25 over the query's text: give --text")
    index = Index.load(args.index if len(args.index) > 1 else args.index[0])
    if args.hybrid is not None:
        index.check_hybrid()  # before the model loads
    t.append(time.perf_counter())
    model = _load(args)
    t.append(time.perf_counter())
    if args.text is not None:
        q = model.encode_query([args.text])
    else:
        q = model.encode_query([args.image], modality="image")
    t.append(time.perf_counter())
    if args.hybrid is None:
        scores, ids = index.search(q, k=args.k, fingerprint=model.fingerprint())
    else:
        scores, ids = index.search_hybrid(q, [args.text], k=args.k, fusion=args.hybrid, fingerprint=model.fingerprint())
    t.append(time.perf_counter())
    seconds = {k: round(b - a, 4) for k, a, b in zip(("index_load", "model_load", "encode", "search"), t, t[1:])}
    where = {i: n for n, i in enumerate(index.ids)}
    hits = []
    for rank, (s, i) in enumerate(zip(scores[0], ids[0]), 1):
        if i is None:
            break
        hit = {"rank": rank, "score": round(float(s), 6), "id": i}
        if index.metadata is not None:
            hit.update(index.metadata[where[i]])
        hits.append(hit)
    if args.json:
        print(json.dumps({"query": args.text if args.text is not None else args.image, "hits": hits, "seconds": seconds},
                         ensure_ascii=False))
    else:
        print(f"{'rank':>4}  {'score':>8}  id")
        for h in hits:
            extra = h.get("caption") or h.get("text", "")
            print(f"{h['rank']:>4}  {h['score']:>8.4f}  {h['id']}" + (f"  | {extra[:80]}" if extra else ""))
    return 0


def cmd_explain(args) -> int:
    from .explain import explain

    model = _load(args)
    res = explain(model, text=args.text, image=args.image, top=args.top, dims=args.dims)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
        return 0
    m = res["modulation"]
    print(f"query: {res['query']!r}   head: {res['head']}   modulation: max/min {m['max_over_min']:.3f}, "
          f"entropy {m['entropy']:.4f} of uniform")
    print(f"{'rank':>4}  {'w':>8}  {'contribution':>12}  {'raises dims':<16}  token")
    for t in res["tokens"]:
        print(f"{t['rank']:>4}  {t['w']:>8.4f}  {t['contribution']:>12.5f}  {str(t['raises_dims']):<16}  {t['token']}")
    print("most amplified dims (share of a x d): " + ", ".join(f"{x['dim']} ({x['gain']:.2f})" for x in res["amplified_dims"]))
    return 0


def _eval_label(name: str, taken: set) -> str:
    """A row label: ``BM25``, a saved folder's last two path parts (``run/final``), else the name."""
    from .serialization import CONFIG_NAME

    plain = name[len("hybrid:"):] if name.startswith("hybrid:") else name
    if os.path.isfile(os.path.join(plain, CONFIG_NAME)):
        parts = os.path.normpath(os.path.abspath(plain)).split(os.sep)
        plain = "/".join(parts[-2:])
    label = "BM25" if name == "bm25" else (f"{plain} + BM25" if name.startswith("hybrid:") else plain)
    base, n = label, 2
    while label in taken:
        label, n = f"{base} #{n}", n + 1
    return label


def _fusion(args, model, name: str):
    """The ``hybrid`` argument of :func:`lsb_mm.evaluate` for ``hybrid:<model>`` and a note on it."""
    from .evaluation import choose_fusion_weight, find_tasks

    if args.fusion == "rrf":
        return "rrf", None
    if args.fusion_weight is not None:
        return args.fusion_weight, None
    chosen = choose_fusion_weight(model, find_tasks(args.fusion_val), batch_size=args.batch_size)
    print(f"{name}: dense weight {chosen['weight']:g} chosen on --fusion-val (NDCG@10 "
          f"{chosen['scores'][chosen['weight']]:.4f})", file=sys.stderr)
    return chosen["weight"], chosen


def cmd_eval(args) -> int:
    from .evaluation import CorpusCache, check_ks, evaluate, find_tasks
    from .reports import write_reports
    from .serialization import CONFIG_NAME

    check_ks(args.k)
    names = list(args.model)
    if args.label and len(args.label) != len(names):
        raise InputError(f"--label: {len(args.label)} labels for {len(names)} --model values; give one per model")
    if args.fusion == "rrf" and (args.fusion_weight is not None or args.fusion_val is not None):
        raise InputError("--fusion-weight and --fusion-val set weighted fusion: add --fusion weighted (rrf has no weight)")
    if any(n.startswith("hybrid:") for n in names):
        if args.fusion == "weighted" and (args.fusion_weight is None) == (args.fusion_val is None):
            raise InputError("--fusion weighted needs exactly one of --fusion-weight W (the dense share, 0..1) and "
                             "--fusion-val TASKS (validation task folders that choose W; never the test tasks)")
        if args.fusion_weight is not None and not 0 <= args.fusion_weight <= 1:
            raise InputError(f"--fusion-weight must be in [0, 1] (the dense share), got {args.fusion_weight}")
    folders = find_tasks(args.tasks)
    options = {"--pooling": args.pooling, "--model-option": args.model_options, "--pretrained": args.pretrained}
    runs, taken = [], set()
    for i, name in enumerate(names):
        label = args.label[i] if args.label else _eval_label(name, taken)
        taken.add(label)
        if name == "bm25":
            run = evaluate("bm25", folders, ks=args.k)
            run["model"], run["label"] = label, label
            runs.append(run)
            continue
        plain = name[len("hybrid:"):] if name.startswith("hybrid:") else name
        one = argparse.Namespace(**vars(args))
        one.model = plain
        if os.path.isfile(os.path.join(plain, CONFIG_NAME)):  # a saved folder carries its own backbone settings
            given = [flag for flag, value in options.items() if value]
            if given:
                print(f"lsb-mm eval: note: {', '.join(given)} not applied to {plain} (a saved model keeps its own "
                      "settings)", file=sys.stderr)
            one.pooling, one.model_options, one.pretrained = None, None, None
        model = _load(one)
        model.name = label
        hybrid, chosen = _fusion(args, model, label) if name.startswith("hybrid:") else (None, None)
        cache = CorpusCache()  # one model's documents, shared by its plain row
        run = evaluate(model, folders, ks=args.k, batch_size=args.batch_size, factory=args.factory,
                       show_progress_bar=not args.quiet, corpus_cache=cache, hybrid=hybrid)
        run["model"], run["label"] = label, label
        if chosen is not None:
            run["fusion_validation"] = chosen
        runs.append(run)
        if args.compare_plain:
            plain_run = evaluate(model, folders, ks=args.k, batch_size=args.batch_size, factory=args.factory,
                                 enhance=False, show_progress_bar=not args.quiet, corpus_cache=cache, hybrid=hybrid)
            plain_run["model"] = plain_run["label"] = _eval_label(f"{label} (plain)", taken)
            taken.add(plain_run["label"])
            runs.append(plain_run)
    paths = write_reports(runs, args.output)
    print(json.dumps(paths))
    return 0


def _cut_to_window(args, pairs):
    """Pairs with passages cut to ``--max-tokens`` (tokens of ``--model``'s tokenizer, else words) or to
    ``--model``'s window; says how many were cut."""
    from .datasets.text_experiment import cut_passages

    tokenize = window = None
    if args.model:
        model = _load(argparse.Namespace(model=args.model, head="none", pretrained=None, pooling=None,
                                         model_options=None, device="cpu"))
        tower = getattr(model.backbone, "text", model.backbone)  # a dual encoder's text side
        if not model.has_text or not hasattr(tower, "max_length") or \
                "attention_mask" not in tower.tokenize(["a"]):
            raise InputError(f"--model {args.model}: sizing passages needs a Hugging Face text tower (hf:..., minilm, "
                             "or a dual encoder with one); give --max-tokens N alone to cut to N words")
        tokenize, window = tower.tokenize, tower.max_length
    limit = args.max_tokens if args.max_tokens is not None else window
    out, n = cut_passages(pairs, limit, tokenize)
    unit = "tokens" if tokenize is not None else "words"
    print(f"lsb-mm build-tasks: cut {n} of {len(set(p for _, p in pairs))} passages to {limit} {unit}"
          + (f" ({args.model}'s tokenizer)" if tokenize is not None else ""), file=sys.stderr)
    return out, n


def cmd_build_tasks(args) -> int:
    from .datasets import tasks as T

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise InputError(f"--output {args.output} is a file; give a folder for the tasks")
    if args.split is not None and not args.overwrite:
        held = [n for n in ("train.jsonl", "val.jsonl", "test", "validation") if os.path.lexists(os.path.join(args.output, n))]
        if held:
            raise InputError(f"--output {args.output} already holds {', '.join(held)} of an earlier split: add --overwrite "
                             "to replace them, or choose a new folder")
    with T.replacing(args.overwrite):
        return _build_tasks(args)


def cmd_serve(args) -> int:
    indexes = {}
    for spec in args.index:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--index {spec!r}: expected NAME=FOLDER")
        if name in indexes:
            raise InputError(f"--index {name} given twice")
        indexes[name] = folder
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise InputError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    if args.max_batch < 1 or not 0 <= args.batch_wait_ms <= 1000:
        raise InputError(f"--max-batch must be >= 1 and --batch-wait-ms in 0..1000, got {args.max_batch}, {args.batch_wait_ms}")
    from .errors import require_extra

    require_extra("serve", "lsb-mm serve", "fastapi", "uvicorn")
    from .serve import SearchService, create_app, serve_forever
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    service = SearchService(_load(args), indexes)
    app = create_app(service, api_key=args.api_key, max_body=int(args.max_body_mb * (1 << 20)), cors_origins=args.cors_origin,
                     batching=not args.no_batching, max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms)
    print(json.dumps({"serving": sorted(indexes), "url": f"http://{args.host}:{args.port}/"}), flush=True)
    if serve_forever(app, args.host, args.port) != 0:
        raise InputError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this machine?)")
    return 0


def _refuse_undecodable(paths: List[str], what: str) -> None:
    """Tasks are built only from images that decode (each is decoded once here), so that a bad file
    is named now, not as a failure of a later ``eval``."""
    from .images import check_images

    bad = check_images(paths)[1]
    if bad:
        raise InputError(f"{what}: {len(bad)} of {len(paths)} images cannot be read, e.g. {bad[0][0]}: {bad[0][1]}")


def _build_tasks(args) -> int:
    from .datasets import tasks as T
    from .datasets.text_experiment import build_caption_split, build_text_split, usable_kinds

    made: List[str] = []
    report: dict = {}
    if (args.model or args.max_tokens is not None) and not (args.pairs or args.beir):
        raise InputError("--model and --max-tokens cut text passages: give --pairs or --beir")
    if args.split is not None and (args.labelled or sum(bool(x) for x in (args.pairs or args.beir, args.captions)) != 1):
        raise InputError("--split applies to one source: --pairs, --beir or --captions (not --labelled)")
    if args.pairs or args.beir:
        if args.pairs:
            pairs = []
            for n, rec in iter_jsonl(args.pairs):
                if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not isinstance(rec.get("passage"), str):
                    raise InputError(f"{args.pairs}:{n}: expected {{\"query\": <text>, \"passage\": <text>}}")
                pairs.append((rec["query"], rec["passage"]))
        else:
            pairs = T.read_beir_pairs(args.beir)
        if not pairs:
            raise InputError(f"{args.pairs or args.beir}: no (query, passage) pairs")
        if args.model or args.max_tokens is not None:
            pairs, n_cut = _cut_to_window(args, pairs)
            report["cut"] = n_cut
        if args.split is not None:
            report.update(build_text_split(pairs, args.output, args.split, args.text_tasks, args.val_fraction, args.seed))
            made += report.pop("tasks")
        else:
            kinds, skipped = usable_kinds([p for _, p in pairs], args.text_tasks)
            report["skipped_kinds"] = skipped
            made += T.text_tasks(pairs, args.output, kinds=kinds, seed=args.seed)
        if report.get("skipped_kinds"):
            print(f"lsb-mm build-tasks: note: {', '.join(report['skipped_kinds'])} skipped: no passage has that many "
                  "words", file=sys.stderr)
    if args.labelled:
        _refuse_undecodable([p for ps in T.labelled_classes(args.labelled).values() for p in ps], f"--labelled {args.labelled}")
        made += T.image_tasks(args.labelled, args.output, kinds=args.image_tasks, position=args.position, seed=args.seed,
                              max_per_class=args.max_per_class)
    if args.captions:
        from .corpus import read_documents

        docs = read_documents(images=args.captions)
        items = [(m["caption"], p) for p, m in zip(docs.items, docs.metadata) if "caption" in m]
        if not items:
            raise InputError(f"--captions {args.captions}: no image has a caption sidecar (x.png + x.txt)")
        _refuse_undecodable([p for _, p in items], f"--captions {args.captions}")
        if len(items) < len(docs.items):
            print(f"lsb-mm build-tasks: note: {len(docs.items) - len(items)} of {len(docs.items)} images have no "
                  "caption sidecar and are left out", file=sys.stderr)
        if args.split is not None:
            report.update(build_caption_split(items, args.output, args.split, args.val_fraction, args.seed))
            made += report.pop("tasks")
        else:
            made += T.cross_tasks(items, args.output)
    if not made:
        raise InputError("give --pairs, --beir, --labelled or --captions")
    print(json.dumps({"tasks": made, **report}))
    return 0


def cmd_recipes(args) -> int:
    from .recipes import FINE_TUNE, PLUGIN

    rows = [{"modality": m, "head": h, "train": "heads", **r} for (m, h), r in sorted(PLUGIN.items())]
    rows.append({"modality": "any", "head": "any", "train": "all (or no swept recipe)", **FINE_TUNE, "source": "fine-tune default"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| modality | head | train | lr | temperature | weight decay | source |\n|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['head']} | {r['train']} | {r['lr']:g} | {r['temperature']:g} | {r['weight_decay']:g} | "
              f"{r['source']} |")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, head=args.head, max_steps=args.max_steps, limit=args.limit, stamps_root=args.stamps, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsb-mm", description="LexSemBridge retrieval for text and images: token-aware SLR/LLR/CLR heads "
                                   "over open_clip, timm and Hugging Face encoders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"lsb-mm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    enc = sub.add_parser("encode", help="encode texts or a folder of images to a .npy matrix",
                         description="Encode texts (one per line, or JSONL with a 'text' field) or every image under "
                                     "a folder into float32, L2-normalised embeddings saved as .npy, plus a "
                                     "<output>.rows.jsonl file that maps rows to inputs. Prints a JSON summary.",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _add_model_args(enc)
    src = enc.add_mutually_exclusive_group(required=True)
    src.add_argument("--texts", help="a .txt file (one text per line) or .jsonl file")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    enc.add_argument("--output", required=True, help="where to write the embeddings (.npy)")
    enc.add_argument("--role", default="document", choices=["query", "document"],
                     help="document (default): what an index holds, plain unless the model fuses documents; "
                          "query: with the query-side head (for the queries you search with)")
    enc.add_argument("--no-enhance", action="store_true", help="plain backbone embeddings, no head")
    enc.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
    enc.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default: 0)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=cmd_encode)

    tr = sub.add_parser("train", help="contrastive training of heads (and towers): text, image or cross-modal",
                        description="Train LexSemBridge heads (and optionally the towers) with InfoNCE over in-batch "
                                    "passages and hard negatives, on one process or several (torchrun).",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EPILOG)
    _add_train_args(tr)
    tr.set_defaults(func=cmd_train)

    ix = sub.add_parser("index", help="encode documents (images, JSONL/BEIR, CSV, Parquet, WebDataset tar) into a FAISS index folder",
                        description="Encode documents with role=document and write an index folder (manifest.json, "
                                    "index.faiss, ids.jsonl, metadata.jsonl) atomically.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  lsb-mm index --model runs/m/final --images photos/ --output photos.index\n"
                               "  lsb-mm index --model hf:/path/MiniLM --corpus beir/scifact --factory HNSW32 --output sf.index\n"
                               "  lsb-mm index ... --shard 2/4 --output part2.index   (then search --index part1.index part2.index ...)\n"
                               "  lsb-mm index --model minilm --tar 'shards/*.tar' --engine ray --factory auto --max-index-memory 4G \\\n"
                               "      --output big.index   (shards in big.index.embeddings: rerun to resume)")
    _add_model_args(ix)
    srcs = ix.add_mutually_exclusive_group(required=True)
    srcs.add_argument("--images", help="a folder of images (recursive; x.txt sidecars become captions)")
    srcs.add_argument("--corpus", help="a JSONL corpus ({_id, text|image}) or a BEIR folder")
    srcs.add_argument("--csv", help="a CSV/TSV of images (--csv-img-key) with captions (--csv-caption-key)")
    srcs.add_argument("--parquet", help="Parquet file(s): a file, a folder or a glob; columns _id (or id) and text, "
                                        "or image (bytes or a path) with an optional caption")
    srcs.add_argument("--tar", help="tar shards in the WebDataset layout (KEY.jpg + KEY.txt caption + KEY.json, or "
                                    "KEY.txt alone for text): a file, a folder or a glob such as 'shards/*.tar'")
    ix.add_argument("--csv-img-key", default="filepath")
    ix.add_argument("--csv-caption-key", default="caption")
    ix.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    ix.add_argument("--output", required=True, help="index folder to write")
    ix.add_argument("--factory", default="Flat",
                    help="FAISS index factory string: Flat (exact), HNSW32, IVF1024,Flat, IVF1024,SQ8, IVF1024,PQ32 ...; "
                         "binary codes (1 bit per dimension): BFlat, BIVF1024, BHNSW32, with ,Rescore4 to reorder 4k "
                         "Hamming candidates by the float query; or auto: chosen from the corpus size, dimension and "
                         "--max-index-memory (Flat, HNSW32, IVF-Flat, IVF-SQ8, IVF-PQ)")
    ix.add_argument("--max-index-memory", default=None, metavar="SIZE",
                    help="memory budget of the index for --factory auto, e.g. 512M, 4G (default: none)")
    ix.add_argument("--target-recall", type=float, default=None,
                    help="tune nprobe / efSearch to this Recall@10 against exact search on 1,000 of the documents "
                         "as queries (default with --factory auto: 0.95)")
    ix.add_argument("--index-device", default="auto", choices=["auto", "cpu", "gpu"], help="where the index lives (auto: all GPUs when FAISS sees one)")
    ix.add_argument("--bm25", action="store_true",
                    help="also index each document's text (images: its caption) with BM25, for search --hybrid")
    ix.add_argument("--engine", default="memory", choices=["memory", "local", "ray"],
                    help="memory (default): encode everything in this process, then index. local / ray: encode "
                         "into resumable embedding shards (--embeddings), in this process or on Ray Data actors, "
                         "then build the index from the shards a block at a time (for corpora bigger than memory)")
    ix.add_argument("--embeddings", default=None, metavar="FOLDER",
                    help="where --engine local|ray writes its shards (default: OUTPUT.embeddings); a rerun skips "
                         "finished shards")
    ix.add_argument("--shard-size", type=int, default=8192,
                    help="documents per embedding shard (default 8192; Parquet: whole row groups up to about that "
                         "many rows, a larger group in slices; tar: one shard per file)")
    ix.add_argument("--embedding-dtype", default="float32", choices=["float32", "float16"],
                    help="dtype of the shard files (float16 halves the disk; vectors are re-normalised when read)")
    ix.add_argument("--replicas", type=int, default=2,
                    help="--engine ray: model replicas (actors) when Ray sees no GPU; with GPUs, one per GPU (default 2)")
    ix.add_argument("--address", default=None,
                    help="--engine ray: join the Ray cluster at this address (default: start Ray on this machine)")
    ix.add_argument("--overwrite", action="store_true",
                    help="--engine local|ray: start over, discarding every shard in --embeddings (needed when they "
                         "belong to an earlier, different job)")
    ix.add_argument("--shard", default=None, help="index only slice i/n of the documents (e.g. 2/4)")
    ix.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in OUTPUT.skipped.jsonl")
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--workers", type=int, default=2, help="image decoding worker processes (default: 2)")
    ix.add_argument("-q", "--quiet", action="store_true")
    ix.set_defaults(func=cmd_index)

    se = sub.add_parser("search", help="search an index with a text or an image query",
                        description="Encode one query (role=query) and print the top-k as a table or JSON. The model "
                                    "must be the one that built the index (its fingerprint is checked).")
    _add_model_args(se)
    se.add_argument("--index", nargs="+", required=True, help="index folder(s); several shards are searched together")
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query")
    q.add_argument("--image", help="an image query (file path)")
    se.add_argument("-k", type=int, default=10, help="results to return (default: 10)")
    se.add_argument("--hybrid", type=_fusion_arg, default=None, metavar="rrf|W",
                    help="fuse with the index's BM25 side (built with index --bm25): rrf (reciprocal-rank fusion) or "
                         "a dense weight W in [0, 1] (weighted min-max scores; choose W with eval --fusion-val)")
    se.add_argument("--json", action="store_true", help="print JSON instead of a table (with the seconds spent loading the index and the model, encoding and searching)")
    se.set_defaults(func=cmd_search)

    xp = sub.add_parser("explain", help="which tokens (or visual words) drive a query's modulation",
                        description="List the query's tokens (SLR/LLR; for CLR the vocabulary entries) whose columns "
                                    "of W_p contribute most to the modulation a = softmax(W_p w + b_p), the dimensions "
                                    "each one raises, and how far a is from uniform.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  lsb-mm explain --model runs/slr/final --text \"open a tcp socket\"\n"
                               "  lsb-mm explain --model runs/img/final --image crop.png --top 5 --json")
    _add_model_args(xp)
    xq = xp.add_mutually_exclusive_group(required=True)
    xq.add_argument("--text", help="a text query")
    xq.add_argument("--image", help="an image query (file path)")
    xp.add_argument("--top", type=int, default=10, help="tokens to list (default: 10)")
    xp.add_argument("--dims", type=int, default=3, help="dimensions per token (default: 3)")
    xp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    xp.set_defaults(func=cmd_explain)

    ev = sub.add_parser("eval", help="evaluate models on task folders: JSON, markdown table, PNG plot",
                        description="Encode each task's corpus once per model, search it with FAISS and report "
                                    "NDCG@k, MRR@k, Recall@k, MAP@k (k = 1, 3, 5, 10).")
    _add_model_args(ev, multiple=True)
    ev.add_argument("--label", action="append", default=None,
                    help="a row name per --model, in order (default: BM25, a saved folder's last two path parts, "
                         "or the name); results.json is keyed by it")
    ev.add_argument("--fusion", default="rrf", choices=["rrf", "weighted"],
                    help="how a hybrid:<model> row fuses its ranking with BM25's: reciprocal-rank fusion, or "
                         "weighted min-max normalised scores (default: %(default)s)")
    ev.add_argument("--fusion-weight", type=float, default=None, help="weighted fusion: the dense share W in [0, 1]")
    ev.add_argument("--fusion-val", nargs="+", default=None,
                    help="weighted fusion: validation task folders on which W is chosen (NDCG@10, W = 0, 0.1 .. 1)")
    ev.add_argument("--tasks", nargs="+", required=True, help="task folders, or folders of task folders")
    ev.add_argument("--output", required=True, help="folder for results.json, results.md and recall.png")
    ev.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10], help="cut-offs (default: 1 3 5 10)")
    ev.add_argument("--factory", default="Flat", help="FAISS index for the corpus (default: Flat, exact)")
    ev.add_argument("--compare-plain", action="store_true", help="also score each model without its head")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("-q", "--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    bt = sub.add_parser("build-tasks", help="build fine-grained retrieval tasks (BEIR layout)",
                        description="Text: query / keyword / pop-N from (query, passage) pairs or a BEIR folder. "
                                    "Images: class / snippet-P from a labelled folder. Cross-modal: caption2image "
                                    "and image2caption from images with caption sidecars.")
    bt.add_argument("--pairs", help="JSONL of {\"query\": ..., \"passage\": ...}")
    bt.add_argument("--beir", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    bt.add_argument("--labelled", help="a labelled image folder (class/image)")
    bt.add_argument("--captions", help="a folder of images with caption sidecars")
    bt.add_argument("--text-tasks", nargs="+", default=["query", "keyword", "pop-16", "pop-32", "pop-64", "pop-128", "pop-256"])
    bt.add_argument("--image-tasks", nargs="+", default=["class", "snippet-10", "snippet-30", "snippet-50", "snippet-80"])
    bt.add_argument("--position", default="top-left", choices=["top-left", "random"], help="where snippets are cut")
    bt.add_argument("--max-per-class", type=int, default=None, help="sample at most N images per class")
    bt.add_argument("--split", type=float, default=None, metavar="F",
                    help="pairs or captions: the share F of documents (passages, images) that train. The rest become "
                         "the tasks in OUTPUT/test; the training documents become OUTPUT/train.jsonl (the trainer's "
                         "format; text: queries of every kind) and, --val-fraction of them, OUTPUT/val.jsonl plus "
                         "validation tasks in OUTPUT/validation")
    bt.add_argument("--val-fraction", type=float, default=0.2,
                    help="with --split: share of the training documents held out as validation (default: %(default)s)")
    bt.add_argument("--model", default=None,
                    help="text: cut passages to this encoder's window with its tokenizer (e.g. minilm), so pop-N spans "
                         "are text the encoder sees")
    bt.add_argument("--max-tokens", type=int, default=None,
                    help="text: cut passages to N tokens (of --model's tokenizer; without --model, N words)")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--output", required=True, help="folder that receives one sub-folder per task")
    bt.add_argument("--overwrite", action="store_true",
                    help="replace task folders of the same names in --output (and, with --split, its train.jsonl / "
                         "val.jsonl); without it an existing one is refused. Other content is never touched, and a "
                         "folder that is not a task folder is never replaced")
    bt.set_defaults(func=cmd_build_tasks)

    rc = sub.add_parser("recipes", help="the default lr / temperature / weight decay of `lsb-mm train`, per modality and head",
                        description="The training defaults filled in when --lr, --temperature or --weight-decay are not "
                                    "given: with --train heads (towers locked), the plug-in recipe that "
                                    "scripts/sweep_heads.py chose on validation for the modality and head; otherwise "
                                    "the fine-tune defaults.")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    rc.set_defaults(func=cmd_recipes)

    de = sub.add_parser("demo", help="the whole method on real data, offline, in minutes: train, index, evaluate, gallery",
                        description="Build the MiniLM + EfficientNet-Lite0 dual encoder from packaged weights, train "
                                    "a baseline and a LexSemBridge head (towers locked) on Tux Paint stamps, index and "
                                    "evaluate held-out stamps (caption->image, 30% crop->image, class), print the table "
                                    "and write an HTML gallery. Needs the Debian package tuxpaint-stamps-default.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  lsb-mm demo                      # about 2 minutes on 2 CPU cores\n"
                               "  lsb-mm demo --head llr --output runs/demo-llr")
    de.add_argument("--output", default="runs/demo", help="folder for results, indexes, gallery.html; an earlier demo's "
                    "folder is replaced, any other non-empty folder refused (default: %(default)s)")
    de.add_argument("--head", default="slr", choices=_head_choices(with_none=False), help="the LexSemBridge head (default: %(default)s)")
    de.add_argument("--max-steps", type=int, default=600,
                    help="cap on steps per training; each stops earlier when validation stops improving (default: %(default)s)")
    de.add_argument("--limit", type=int, default=0, help="use the first N stamps only (a quick look; 0: all)")
    de.add_argument("--stamps", default=None, help="a Tux Paint stamps folder (default: the Debian package's)")
    de.add_argument("--seed", type=int, default=0)
    de.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="serve index folders over HTTP (search API; FastAPI docs at /docs)",
                        description="Start a search service on one model and named index folders: a search page "
                                    "at /, POST /search (JSON or an image upload), GET /items/NAME/ID[/thumbnail], "
                                    "/info, /health, POST /admin/reload (re-read a rebuilt folder; a failed reload "
                                    "keeps the old index). Concurrent queries are batched into one encode call. "
                                    "Binds 127.0.0.1 unless --host says otherwise.",
                        epilog="example: lsb-mm serve --model runs/demo/model-slr --index stamps=runs/demo/index-slr "
                               "(then open http://127.0.0.1:8000/)")
    _add_model_args(sv)
    sv.add_argument("--index", action="append", required=True, metavar="NAME=FOLDER",
                    help="an index folder served as NAME (repeat for several)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require this key in the X-API-Key header (/, /health and /docs stay open)")
    sv.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, MiB (default: %(default)s)")
    sv.add_argument("--cors-origin", action="append", default=None, help="allow browsers on this origin (default: none)")
    sv.add_argument("--max-batch", type=int, default=32, help="most queries encoded together (default: %(default)s)")
    sv.add_argument("--batch-wait-ms", type=float, default=2.0,
                    help="how long a query waits for others to join its batch (default: %(default)s)")
    sv.add_argument("--no-batching", action="store_true", help="encode every query alone (to compare)")
    sv.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for encoding (default: torch's choice; one fewer than the cores leaves one "
                         "for HTTP, which pays off on small machines)")
    sv.set_defaults(func=cmd_serve)
    return parser


@contextlib.contextmanager
def _hub_bars_off(off: bool):
    """Hugging Face's own progress bars (transformers' "Loading weights", the hub's) off while a
    command runs with ``-q`` (or prints one query's results): set through the environment for a
    transformers imported during the command, directly for one already imported; restored after."""
    if not off:
        yield
        return
    env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    loaded = sys.modules.get("transformers.utils.logging")
    was_on = loaded.is_progress_bar_enabled() if loaded else None
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if loaded:
        loaded.disable_progress_bar()
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = env
        now = sys.modules.get("transformers.utils.logging")
        if now and (was_on if loaded else env is None):
            import warnings

            with warnings.catch_warnings():  # the hub keeps the variable it read at import and says so
                warnings.simplefilter("ignore")
                now.enable_progress_bar()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    bad = ("--batch-size must be >= 1" if getattr(args, "batch_size", 1) < 1 else
           f"--workers must be >= 0 (0: decode in this process), got {args.workers}" if getattr(args, "workers", 0) < 0
           else None)
    if bad:
        print(f"lsb-mm {args.command}: error: {bad}", file=sys.stderr)
        return 2
    try:
        with _hub_bars_off(getattr(args, "quiet", False) or args.command == "search"):
            return args.func(args)
    except LSBError as exc:
        print(f"lsb-mm {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave: missing, a file where a folder goes, no permission ...
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        print(f"lsb-mm {args.command}: error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
