"""The man-page retrieval experiment shared by the text reproductions and the head sweep.

Debian ``manpages`` + ``manpages-dev``: query = a page's NAME line, passage = its body cut to the
longest prefix of whole words that fits the encoder's window (so every ``pop-N`` span is text the
encoder sees). Pages are split by section (seeded): held-out pages become BEIR task folders
(``query``, ``keyword``, ``pop-N``), training pages become training queries built with the same
builders, from the training pages alone.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lsb_mm.data.task_split import fit_words, write_training_queries

__all__ = ["build_manpage_experiment", "build_doc_training"]


def build_manpage_experiment(work: str, model, pages: int = 0, test_fraction: float = 0.4,
                             pop: Sequence[int] = (16, 32, 64, 128), train_queries: Optional[Sequence[str]] = None,
                             per_page: str = "one") -> Tuple[str, List[str], Dict]:
    """Train JSONL and held-out task folders under ``work``; returns (train file, task folders, info).
    ``info["train_tasks"]``: tasks of every kind over the training pages (a validation set for choices
    such as a fusion weight; never the test tasks)."""
    from lsb_mm.data.splits import stratified_split
    from lsb_mm_experiments.datasets.manpages import load_manpages
    from lsb_mm.data.tasks import text_tasks

    loaded = load_manpages(limit=pages or None)
    window = model.backbone.max_length
    pairs = [(p, fit_words(p.body, model.backbone.tokenize, window)) for p in loaded]
    section = lambda pair: os.path.basename(os.path.dirname(pair[0].path))  # noqa: E731  man2, man3 ...
    train, test = stratified_split(pairs, section, test_fraction, seed=0)
    os.makedirs(work, exist_ok=True)
    kinds = ["query", "keyword"] + [f"pop-{n}" for n in pop]
    train_file = os.path.join(work, "train.jsonl")
    n_train = write_training_queries([(p.name_line, passage) for p, passage in train], train_queries or kinds,
                                     train_file, os.path.join(work, "train_tasks"), per_page=per_page)
    folders = text_tasks([(p.name_line, passage) for p, passage in test], os.path.join(work, "tasks"), kinds=kinds, seed=0)
    words = [len(passage.split()) for _, passage in pairs]
    info = {"pages": len(loaded), "train_pages": len(train), "train_examples": n_train, "test_pages": len(test),
            "train_tasks": os.path.join(work, "train_tasks"), "window_tokens": window, "per_page": per_page,
            "passage_words": {"min": min(words), "median": sorted(words)[len(words) // 2], "max": max(words)},
            "tasks": {os.path.basename(f): json.load(open(os.path.join(f, "task.json"))) for f in folders}}
    return train_file, folders, info


def build_doc_training(work: str, model, packages: Sequence[str], sections: int = 4000,
                       pop: Sequence[int] = (16, 32, 64, 128), seed: int = 0) -> Tuple[str, Dict]:
    """Extra training queries from documentation sections (:mod:`lsb_mm_experiments.datasets.sphinx_docs`): a
    seeded sample of ``sections`` sections (0: all), each body cut to the encoder's window as the
    man pages are, then one training query of every kind per section (title as ``query``, keywords,
    ``pop-N`` spans). Returns (``<work>/docs_train.jsonl``, info)."""
    from lsb_mm_experiments.datasets.sphinx_docs import load_doc_sections

    found, counts = load_doc_sections(packages)
    order = np.random.default_rng([seed, 104729]).permutation(len(found))
    chosen = [found[i] for i in (order[:sections] if sections else order)]
    window = model.backbone.max_length
    pairs = [(s.title, fit_words(s.body, model.backbone.tokenize, window)) for s in chosen]
    os.makedirs(work, exist_ok=True)
    train_file = os.path.join(work, "docs_train.jsonl")
    longest = max(len(p.split()) for _, p in pairs)
    kinds = ["query", "keyword"] + [f"pop-{n}" for n in pop if n <= longest]  # a span needs that many words
    n = write_training_queries(pairs, kinds, train_file, os.path.join(work, "docs_train_tasks"), seed=seed, per_page="all")
    words = sorted(len(p.split()) for _, p in pairs)
    info = {"packages": list(packages), "found": counts, "sections": len(pairs), "train_examples": n, "kinds": kinds,
            "passage_words": {"min": words[0], "median": words[len(words) // 2], "max": words[-1]}}
    return train_file, info
