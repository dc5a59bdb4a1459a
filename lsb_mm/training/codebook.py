"""Fitting the visual words on training images before an image head trains on a fresh codebook."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from lsb_mm.data.images import load_image
from lsb_mm.data.training_data import TrainData
from lsb_mm.training.distributed import DistInfo

__all__ = ["training_images", "fit_codebook_for_run"]


def training_images(data: TrainData, kinds: Sequence[str], limit: int) -> List[str]:
    """Up to ``limit`` distinct images of the training data, in order (queries and / or positives,
    whichever side of ``kinds`` = ``(query kind, document kind)`` is images)."""
    qkind, pkind = kinds
    seen: Dict[str, None] = {}
    for e in data.examples:
        for item in ([e.query] if qkind == "image" else []) + (list(e.pos) if pkind == "image" else []):
            seen.setdefault(item)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def fit_codebook_for_run(model, data: TrainData, kinds: Sequence[str], n: int, seed: int, dist: DistInfo) -> bool:
    """Fit ``model``'s visual words on up to ``n`` training images (-1: 1000; 0: never) when an
    image head would train on an unfitted codebook; returns whether it did (the image head was
    re-created: its optimizer must be rebuilt).

    Rank 0 fits; the others take its centroids. The vocabulary shrinks when the images give fewer
    than 40 patch features per visual word (the same rule on every rank)."""
    m = model
    if "image" not in kinds or n == 0 or m.image_head is None or m.image_head.kind == "none" or bool(m.visual_words.fitted):
        return False
    images = training_images(data, kinds, n if n > 0 else 1000)
    with torch.no_grad():
        patches = m.image_stream(m.image_transform(load_image(images[0])).unsqueeze(0)).ids.shape[1]
    vocab = max(2, min(m.visual_words.vocab_size, len(images) * patches // 40))  # FAISS wants >= 39 points each
    if dist.is_main:
        m.fit_codebook(images, vocab_size=vocab, seed=seed, show_progress_bar=False)
    else:
        m.resize_visual_vocab(vocab, seed=seed)
    if dist.enabled:  # every rank starts from rank 0's codebook and (possibly re-created) image head
        import torch.distributed as tdist

        for t in [m.visual_words.centroids, m.visual_words.fitted, *m.image_head.parameters(), *m.image_head.buffers()]:
            tdist.broadcast(t.data, 0)
    return True
