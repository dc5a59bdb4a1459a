"""What several commands share: the model arguments, loading a model, reading texts."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from lsb_mm.errors import InputError
from lsb_mm.files import iter_jsonl, iter_lines


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
    from lsb_mm.models.factory import reserved_options

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
    """Head kinds: the built-in ones, and every head registered with ``lsb_mm.models.heads.register_head``
    when that registry is loaded (the parser does not load it: ``--help`` imports no torch)."""
    from lsb_mm.names import HEAD_KINDS

    heads = sys.modules.get("lsb_mm.models.heads")  # if loaded
    kinds = set(HEAD_KINDS) | set(heads.HEADS if heads is not None else ())
    return sorted(k for k in kinds if with_none or k != "none")


def _pooling_choices() -> List[str]:
    """Pooling modes of ``hf:`` text encoders (``auto``: the folder's sentence-transformers setting, else cls)."""
    from lsb_mm.names import POOLINGS

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
    from lsb_mm.models.factory import create_model

    return create_model(**_model_spec(args), device=args.device)  # "auto": CUDA when available


def _model_spec(args) -> dict:
    """What :func:`lsb_mm.create_model` needs to build the model of ``args`` again (in a worker)."""
    opts = dict(args.model_options or [])
    if args.pooling:
        opts["pooling"] = args.pooling
    return {"name": args.model, "head": args.head, "pretrained": args.pretrained, **opts}
