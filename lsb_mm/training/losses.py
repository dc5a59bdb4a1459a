"""InfoNCE over in-batch passages and hard negatives, optionally across devices."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lsb_mm.training.distributed import gather_with_grad

__all__ = ["info_nce", "corpus_nce"]


def info_nce(queries: torch.Tensor, passages: torch.Tensor, pos_index: torch.Tensor, temperature: float,
             cross_device: bool = False) -> torch.Tensor:
    """``CE(q · p / τ)`` of each query against every passage of the batch, target its positive.

    Args:
        queries: ``[B, d]`` normalised.
        passages: ``[P, d]`` normalised: each query's positive and hard negatives, flattened.
        pos_index: ``[B]`` index of each query's positive in ``passages`` (local numbering).
        cross_device: gather passages from every rank (with gradient) so each query also sees
            the other ranks' passages (ranks may hold different ``P``).

    A query whose group has no hard negative still has the other passages of the batch; the loss
    is the mean over queries, with no division by a negative count.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if cross_device:
        passages, offset = gather_with_grad(passages)
        pos_index = pos_index + offset
    logits = queries @ passages.t() / temperature
    return F.cross_entropy(logits.float(), pos_index)


def corpus_nce(queries: torch.Tensor, docs: torch.Tensor, target: torch.Tensor, temperature: float,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(q · D / τ)`` of each query against a whole corpus ``docs [N, d]`` (exact softmax).

    ``target [B]`` is each query's positive row in ``docs``; ``exclude [B, N]`` (bool) marks rows
    that are not negatives of a query (its other positives): they leave its softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = (queries @ docs.t()).float() / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, target)
