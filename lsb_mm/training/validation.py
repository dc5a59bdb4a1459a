"""Validation during training: held-out retrieval metrics and a validation split carved from the
training data with no document on both sides."""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from lsb_mm.data.training_data import TrainData
from lsb_mm.errors import InputError
from lsb_mm.evaluation.metrics import evaluate_ranking

__all__ = ["retrieval_metrics", "split_validation"]

log = logging.getLogger(__name__)
Encode = Callable[..., np.ndarray]  # (items, role=...) -> [n, d] normalised embeddings


def retrieval_metrics(data: TrainData, encode_query: Encode, encode_passage: Encode, ks: Sequence[int] = (1, 5, 10),
                      distractors: Sequence[str] = ()) -> Dict[str, float]:
    """Held-out NDCG@k, MRR@k, Recall@k and success@k of every query against the union of the
    set's passages (and ``distractors``), with the definitions of :mod:`lsb_mm.evaluation.metrics`
    (trec_eval's: Recall@k divides by all of a query's positives)."""
    corpus = list(dict.fromkeys([p for e in data.examples for p in list(e.pos) + list(e.neg)] + list(distractors)))
    q = torch.from_numpy(encode_query([e.query for e in data.examples], role="query"))
    d = torch.from_numpy(encode_passage(corpus, role="document"))
    top = (q @ d.t()).topk(min(max(ks), len(corpus)), dim=1).indices.tolist()
    where = {p: str(i) for i, p in enumerate(corpus)}
    qrels = {str(i): {where[p]: 1 for p in e.pos} for i, e in enumerate(data.examples)}
    ranked = ([str(j) for j in row] for row in top)
    means = evaluate_ranking([str(i) for i in range(len(top))], ranked, qrels, ks)["metrics"]
    return {name: value for name, value in means.items() if name.split("@")[0] in ("ndcg", "mrr", "recall", "success")}


def split_validation(data: TrainData, fraction: float, seed: int) -> Tuple[TrainData, TrainData]:
    """``(train, validation)``: about ``fraction`` of the examples held out, grouped by their first
    positive so that no validation document is also a training positive (seeded)."""
    groups: Dict[str, List[int]] = {}
    for i, e in enumerate(data.examples):
        groups.setdefault(e.pos[0], []).append(i)
    order = list(groups)
    rng = np.random.default_rng([seed, 7919])
    held: List[int] = []
    for g in (order[i] for i in rng.permutation(len(order))):
        if len(held) >= fraction * len(data.examples):
            break
        held += groups[g]
    if not held or len(held) == len(data.examples):
        raise InputError(f"val_fraction {fraction}: {len(data.examples)} examples in {len(groups)} positive groups "
                         "cannot be split into training and validation")
    val_pos = {data.examples[i].pos[0] for i in held}
    keep = sorted(set(range(len(data.examples))) - set(held))
    train_ex = [data.examples[i] for i in keep]
    leaked = [e.source for e in train_ex if set(e.pos) & val_pos]
    if leaked:
        log.info("%d training examples share a positive with the validation set", len(leaked))
    mk = lambda ex: TrainData(ex, data.modality, data.fmt, data.skipped if ex is train_ex else [])  # noqa: E731
    return mk(train_ex), mk([data.examples[i] for i in sorted(held)])
