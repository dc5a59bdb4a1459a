"""``lsb-mm build-tasks``: fine-grained retrieval tasks in the BEIR layout."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from lsb_mm.errors import InputError
from lsb_mm.files import iter_jsonl
from lsb_mm.cli.common import (_load)


def _cut_to_window(args, pairs):
    """Pairs with passages cut to ``--max-tokens`` (tokens of ``--model``'s tokenizer, else words) or to
    ``--model``'s window; says how many were cut."""
    from lsb_mm.data.task_split import cut_passages

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
    from lsb_mm.data import tasks as T

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise InputError(f"--output {args.output} is a file; give a folder for the tasks")
    if args.split is not None and not args.overwrite:
        held = [n for n in ("train.jsonl", "val.jsonl", "test", "validation") if os.path.lexists(os.path.join(args.output, n))]
        if held:
            raise InputError(f"--output {args.output} already holds {', '.join(held)} of an earlier split: add --overwrite "
                             "to replace them, or choose a new folder")
    with T.replacing(args.overwrite):
        return _build_tasks(args)


def _refuse_undecodable(paths: List[str], what: str) -> None:
    """Tasks are built only from images that decode (each is decoded once here), so that a bad file
    is named now, not as a failure of a later ``eval``."""
    from lsb_mm.data.images import check_images

    bad = check_images(paths)[1]
    if bad:
        raise InputError(f"{what}: {len(bad)} of {len(paths)} images cannot be read, e.g. {bad[0][0]}: {bad[0][1]}")


def _build_tasks(args) -> int:
    from lsb_mm.data import tasks as T
    from lsb_mm.data.task_split import build_caption_split, build_text_split, usable_kinds

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
        from lsb_mm.data.documents import read_documents

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


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
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
