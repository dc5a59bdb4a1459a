"""A user's own data -> held-out tasks + training and validation files (``build-tasks --split``).

Text pairs (:func:`build_text_split`): passages are cut to the encoder's window
(:func:`cut_passages`), documents (distinct passages) are split with a seed into training,
validation and test ones. Test documents become BEIR task folders under ``<out>/test``
(``query``, ``keyword``, ``pop-N``), validation documents the same under ``<out>/validation``
(for choosing a fusion weight, say), and training / validation documents become queries of every
kind in the trainer's format (``{"query", "pos", "kind"}``): ``<out>/train.jsonl``, ``<out>/val.jsonl``.
Captioned images (:func:`build_caption_split`): the same with images as the documents
(``caption2image`` / ``image2caption`` tasks; caption -> image training pairs). Nothing of a
test document reaches the training or validation files.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.data.tasks import cross_tasks, read_task, text_tasks
from lsb_mm.errors import InputError
from lsb_mm.files import atomic_write, write_jsonl

__all__ = ["fit_words", "write_training_queries", "cut_passages", "usable_kinds", "build_text_split", "build_caption_split"]

Pairs = List[Tuple[str, str]]


def fit_words(text: str, tokenize, max_tokens: int) -> str:
    """The longest prefix of whole words of ``text`` that ``tokenize`` keeps untruncated."""
    words = text.split()

    def fits(n: int) -> bool:
        return int(tokenize([" ".join(words[:n])])["attention_mask"].sum()) < max_tokens

    lo, hi = 0, len(words)
    if fits(hi):
        return " ".join(words)
    while lo < hi - 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return " ".join(words[:lo])


def write_training_queries(pairs: Sequence[Tuple[str, str]], kinds: Sequence[str], train_file: str, scratch: str,
                           seed: int = 0, per_page: str = "one") -> int:
    """Training examples from training pages, with the builders of the held-out tasks: one query
    per page of a kind drawn (seeded) from ``kinds`` (``per_page="one"``), or one query of every
    kind (``"all"``); returns the count. Each line records its ``kind``."""
    if per_page not in ("one", "all"):
        raise ValueError(f"per_page must be 'one' or 'all', got {per_page!r}")
    by_kind = {}
    for folder in text_tasks(pairs, scratch, kinds=kinds, seed=seed + 1):
        task = read_task(folder)
        by_kind[task.name] = {q["_id"]: q["text"] for q in task.queries}
    rs = np.random.default_rng(seed)
    n = 0
    with atomic_write(train_file) as f:  # a symlink there is replaced, not written through
        for i, (_, passage) in enumerate(pairs):
            usable = [k for k in kinds if f"q{i}" in by_kind[k]]  # a pop-N span needs N words
            chosen = usable if per_page == "all" else [usable[int(rs.integers(len(usable)))]]
            for kind in chosen:
                f.write(json.dumps({"query": by_kind[kind][f"q{i}"], "pos": [passage], "kind": kind}) + "\n")
                n += 1
    return n


def cut_passages(pairs: Sequence[Tuple[str, str]], max_tokens: int, tokenize: Optional[Callable] = None
                 ) -> Tuple[Pairs, int]:
    """Cut every passage to the longest prefix of whole words that fits ``max_tokens`` tokens of
    ``tokenize`` (a Hugging Face-style tokenizer call; None: whitespace words). Returns the pairs
    and how many passages were cut."""
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


def _three_way(docs: Sequence, train_share: float, val_fraction: float, seed: int) -> Dict[object, str]:
    """``{document: "train" | "val" | "test"}``: a seeded share ``train_share`` trains, of which
    ``val_fraction`` validates instead."""
    if not 0 < train_share < 1:
        raise InputError(f"--split is the share of documents that train; it must be in (0, 1), got {train_share}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng([seed, 2]).permutation(len(docs))
    n_train = int(round(len(docs) * train_share))
    n_val = int(round(n_train * val_fraction))
    if not 0 < n_train < len(docs) or (val_fraction and not 0 < n_val < n_train):
        raise InputError(f"{len(docs)} documents cannot be split with --split {train_share} and --val-fraction "
                         f"{val_fraction}: each side needs at least one document")
    return {docs[i]: ("val" if r < n_val else "train") if r < n_train else "test" for r, i in enumerate(order)}


def _counts(side: Dict[object, str]) -> Dict[str, int]:
    return {"train": sum(v == "train" for v in side.values()), "validation": sum(v == "val" for v in side.values()),
            "test": sum(v == "test" for v in side.values())}


def build_text_split(pairs: Sequence[Tuple[str, str]], out: str, train_share: float, kinds: Sequence[str],
                     val_fraction: float = 0.2, seed: int = 0) -> Dict[str, object]:
    """Write ``out/test/<kind>/`` and ``out/validation/<kind>/`` task folders, ``out/train.jsonl``
    and (with ``val_fraction``) ``out/val.jsonl``; returns what was written and the counts."""

    side = _three_way(list(dict.fromkeys(p for _, p in pairs)), train_share, val_fraction, seed)
    parts = {s: [(q, p) for q, p in pairs if side[p] == s] for s in ("train", "val", "test")}
    test_kinds, skipped = usable_kinds([p for _, p in parts["test"]], kinds)
    os.makedirs(out, exist_ok=True)
    made = text_tasks(parts["test"], os.path.join(out, "test"), kinds=test_kinds, seed=seed)
    report: Dict[str, object] = {"tasks": made, "skipped_kinds": skipped, "pairs": len(pairs),  # pairs may share a passage
                                 "documents": _counts(side)}
    if parts["val"]:
        val_kinds, _ = usable_kinds([p for _, p in parts["val"]], kinds)
        report["validation_tasks"] = text_tasks(parts["val"], os.path.join(out, "validation"), kinds=val_kinds, seed=seed)
    with tempfile.TemporaryDirectory(dir=out, prefix=".scratch-") as scratch:
        for s, name, key in (("train", "train.jsonl", "train"), ("val", "val.jsonl", "validation")):
            report[key], report[f"{key}_queries"] = None, 0
            if parts[s]:
                train_kinds, _ = usable_kinds([p for _, p in parts[s]], kinds)
                report[key] = os.path.join(out, name)
                report[f"{key}_queries"] = write_training_queries(parts[s], train_kinds, report[key],
                                                                  os.path.join(scratch, s), seed=seed, per_page="all")
    return report


def build_caption_split(items: Sequence[Tuple[str, str]], out: str, train_share: float, val_fraction: float = 0.2,
                        seed: int = 0) -> Dict[str, object]:
    """(caption, image) items -> ``out/test/{caption2image,image2caption}``, the same under
    ``out/validation``, and caption -> image training pairs ``out/train.jsonl`` / ``out/val.jsonl``."""

    images = list(dict.fromkeys(os.path.abspath(p) for _, p in items))
    side = _three_way(images, train_share, val_fraction, seed)
    parts = {s: [(c, p) for c, p in items if side[os.path.abspath(p)] == s] for s in ("train", "val", "test")}
    os.makedirs(out, exist_ok=True)
    report: Dict[str, object] = {"tasks": cross_tasks(parts["test"], os.path.join(out, "test")), "pairs": len(items),
                                 "documents": _counts(side)}
    if parts["val"]:
        report["validation_tasks"] = cross_tasks(parts["val"], os.path.join(out, "validation"))
    for s, name, key in (("train", "train.jsonl", "train"), ("val", "val.jsonl", "validation")):
        report[key] = os.path.join(out, name) if parts[s] else None
        if parts[s]:
            write_jsonl(report[key], ({"query": c, "pos": [os.path.abspath(p)]} for c, p in parts[s]))
        report[f"{key}_queries"] = len(parts[s])
    return report
