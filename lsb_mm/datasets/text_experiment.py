"""A user's own (query, passage) pairs -> held-out tasks + training and validation files.

The path of ``lsb-mm build-tasks --pairs P --split F``: passages are cut to the encoder's window
(:func:`cut_passages`), documents (distinct passages) are split with a seed into training and
held-out ones, held-out documents become BEIR task folders (``query``, ``keyword``, ``pop-N``),
and the training documents become training queries of every kind in the trainer's format
(``{"query", "pos", "kind"}``), a share of them (whole documents) set aside as validation.
Nothing of a held-out document reaches the training or validation files.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

__all__ = ["cut_passages", "usable_kinds", "build_text_split"]

Pairs = List[Tuple[str, str]]


def cut_passages(pairs: Sequence[Tuple[str, str]], max_tokens: int, tokenize: Optional[Callable] = None
                 ) -> Tuple[Pairs, int]:
    """Cut every passage to the longest prefix of whole words that fits ``max_tokens`` tokens of
    ``tokenize`` (a Hugging Face-style tokenizer call; None: whitespace words). Returns the pairs
    and how many passages were cut."""
    from .manpage_experiment import fit_words

    if max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    cut: Dict[str, str] = {}
    for p in dict.fromkeys(p for _, p in pairs):
        words = p.split()
        cut[p] = " ".join(words[:max_tokens]) if tokenize is None else fit_words(p, tokenize, max_tokens)
    n = sum(cut[p] != " ".join(p.split()) for p in cut)
    empty = [p for p in cut if not cut[p]]
    if empty:
        raise InputError(f"{len(empty)} passage(s) keep no whole word within {max_tokens} tokens, e.g. {empty[0][:60]!r}")
    return [(q, cut[p]) for q, p in pairs], n


def usable_kinds(passages: Sequence[str], kinds: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(kinds some passage can give, kinds none can)``: a ``pop-N`` span needs N words."""
    longest = max((len(p.split()) for p in passages), default=0)
    ok = [k for k in kinds if not (k.startswith("pop-") and k[4:].isdigit() and int(k[4:]) > longest)]
    return ok, [k for k in kinds if k not in ok]


def build_text_split(pairs: Sequence[Tuple[str, str]], out: str, train_share: float, kinds: Sequence[str],
                     val_fraction: float = 0.2, seed: int = 0) -> Dict[str, object]:
    """Write ``out/<kind>/`` task folders of the held-out documents, ``out/train.jsonl`` and (with
    ``val_fraction``) ``out/val.jsonl``; returns what was written and the counts."""
    from .manpage_experiment import write_training_queries
    from .tasks import text_tasks

    if not 0 < train_share < 1:
        raise InputError(f"--split is the share of documents that train; it must be in (0, 1), got {train_share}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    docs = list(dict.fromkeys(p for _, p in pairs))
    order = np.random.default_rng([seed, 2]).permutation(len(docs))
    n_train = int(round(len(docs) * train_share))
    n_val = int(round(n_train * val_fraction))
    if not 0 < n_train < len(docs) or (val_fraction and not 0 < n_val < n_train):
        raise InputError(f"{len(docs)} distinct passages cannot be split with --split {train_share} and --val-fraction "
                         f"{val_fraction}: each side needs at least one document")
    side = {docs[i]: ("val" if r < n_val else "train") if r < n_train else "test" for r, i in enumerate(order)}
    parts = {s: [(q, p) for q, p in pairs if side[p] == s] for s in ("train", "val", "test")}
    test_kinds, skipped = usable_kinds([p for _, p in parts["test"]], kinds)
    os.makedirs(out, exist_ok=True)
    made = text_tasks(parts["test"], out, kinds=test_kinds, seed=seed)
    files, counts = {}, {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".scratch-") as scratch:
        for s, name in (("train", "train.jsonl"), ("val", "val.jsonl")):
            if not parts[s]:
                continue
            train_kinds, _ = usable_kinds([p for _, p in parts[s]], kinds)
            files[s] = os.path.join(out, name)
            counts[s] = write_training_queries(parts[s], train_kinds, files[s], os.path.join(scratch, s), seed=seed,
                                               per_page="all")
    return {"tasks": made, "train": files["train"], "validation": files.get("val"), "skipped_kinds": skipped,
            "documents": {"train": n_train - n_val, "validation": n_val, "test": len(docs) - n_train},
            "training_queries": counts.get("train", 0), "validation_queries": counts.get("val", 0)}
