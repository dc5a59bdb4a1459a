"""``lsb-mm recipes`` and ``lsb-mm demo``."""
from __future__ import annotations

import argparse
import json

from lsb_mm.cli.common import (_head_choices)


def cmd_recipes(args) -> int:
    from lsb_mm.training.recipes import FINE_TUNE, PLUGIN

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
    from lsb_mm_experiments.demo import run_demo

    run_demo(args.output, head=args.head, max_steps=args.max_steps, limit=args.limit, stamps_root=args.stamps, seed=args.seed)
    return 0


def add_parser(sub) -> None:
    """Add this module's command(s) to the ``lsb-mm`` sub-parsers."""
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
