"""``lsb-mm eval``: models (and BM25, hybrids) on task folders."""
from __future__ import annotations

import argparse
import json
import os
import sys

from lsb_mm.errors import InputError
from lsb_mm.cli.common import (_add_model_args, _load)


def _eval_label(name: str, taken: set) -> str:
    """A row label: ``BM25``, a saved folder's last two path parts (``run/final``), else the name."""
    from lsb_mm.models.serialization import CONFIG_NAME

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
    from lsb_mm.evaluation.evaluate import choose_fusion_weight, find_tasks

    if args.fusion == "rrf":
        return "rrf", None
    if args.fusion_weight is not None:
        return args.fusion_weight, None
    chosen = choose_fusion_weight(model, find_tasks(args.fusion_val), batch_size=args.batch_size)
    print(f"{name}: dense weight {chosen['weight']:g} chosen on --fusion-val (NDCG@10 "
          f"{chosen['scores'][chosen['weight']]:.4f})", file=sys.stderr)
    return chosen["weight"], chosen


def cmd_eval(args) -> int:
    from lsb_mm.evaluation.evaluate import CorpusCache, check_ks, evaluate, find_tasks
    from lsb_mm.evaluation.reports import earlier_reports, write_reports
    from lsb_mm.models.serialization import CONFIG_NAME

    check_ks(args.k)
    earlier = earlier_reports(args.output) if os.path.isdir(args.output) else []
    if earlier and not args.overwrite:
        raise InputError(f"--output {args.output} holds {', '.join(earlier)} of an earlier eval: pass --overwrite to "
                         "replace them, or choose another folder")
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
                       show_progress_bar=not args.quiet, corpus_cache=cache, fusion=hybrid)
        run["model"], run["label"] = label, label
        if chosen is not None:
            run["fusion_validation"] = chosen
        runs.append(run)
        if args.compare_plain:
            plain_run = evaluate(model, folders, ks=args.k, batch_size=args.batch_size, factory=args.factory,
                                 enhance=False, show_progress_bar=not args.quiet, corpus_cache=cache, fusion=hybrid)
            plain_run["model"] = plain_run["label"] = _eval_label(f"{label} (plain)", taken)
            taken.add(plain_run["label"])
            runs.append(plain_run)
    paths = write_reports(runs, args.output)
    print(json.dumps(paths))
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
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
    ev.add_argument("--overwrite", action="store_true",
                    help="replace the results.json / results.md / recall.png of an earlier eval in --output")
    ev.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10], help="cut-offs (default: 1 3 5 10)")
    ev.add_argument("--factory", default="Flat", help="FAISS index for the corpus (default: Flat, exact)")
    ev.add_argument("--compare-plain", action="store_true", help="also score each model without its head")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("-q", "--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)
