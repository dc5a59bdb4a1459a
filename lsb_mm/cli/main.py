"""The ``lsb-mm`` command line: the top parser, and ``main``. User mistakes print one line on stderr and exit 2."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import List, Optional

from lsb_mm._version import __version__
from lsb_mm.errors import LSBError, user_message
from lsb_mm.cli import encode, evaluate, index, misc, search, serve, tasks, train
from lsb_mm.cli.common import EPILOG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsb-mm", description="LexSemBridge retrieval for text and images: token-aware SLR/LLR/CLR heads "
                                   "over open_clip, timm and Hugging Face encoders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"lsb-mm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (encode, train, index, search, evaluate, tasks, misc, serve):
        command.add_parser(sub)
    return parser


@contextlib.contextmanager
def _hub_bars_off(off: bool):
    """Hugging Face's own progress bars (transformers' "Loading weights", the hub's) off while a
    command runs with ``-q``, prints one query's results, or is the demo (it prints its own steps):
    set through the environment for a transformers imported during the command, directly for one
    already imported; restored after."""
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
        with _hub_bars_off(getattr(args, "quiet", False) or args.command in ("search", "demo")):
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
