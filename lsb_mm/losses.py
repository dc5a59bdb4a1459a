"""InfoNCE over in-batch passages and hard negatives, optionally across devices."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad

__all__ = ["info_nce"]


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
