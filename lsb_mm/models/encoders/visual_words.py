"""Visual words: a codebook over patch / cell features that turns an image into token ids.

Each patch feature is assigned to its nearest centroid by cosine similarity (spherical
k-means), so ids depend on image content. A new codebook is a seeded random set of unit
vectors (deterministic, usable before fitting); :meth:`VisualWords.fit` replaces it with FAISS
k-means centroids of real patch features.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisualWords"]

log = logging.getLogger(__name__)


class VisualWords(nn.Module):
    def __init__(self, vocab_size: int, dim: int, seed: int = 0, chunk_rows: int = 8192):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"visual vocabulary size must be >= 2, got {vocab_size}")
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("centroids", F.normalize(torch.randn(int(vocab_size), int(dim), generator=g), dim=-1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))  # False until fit() ran
        self.chunk_rows = int(chunk_rows)

    @property
    def vocab_size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @torch.no_grad()
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (cosine) of each row of ``features [..., H]`` -> ids ``[...]``.

        Works in chunks of rows so the score matrix stays ``chunk_rows × V``.
        """
        flat = F.normalize(features.reshape(-1, features.shape[-1]).to(self.centroids.dtype), dim=-1)
        ids = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for s in range(0, flat.shape[0], self.chunk_rows):
            ids[s:s + self.chunk_rows] = (flat[s:s + self.chunk_rows] @ self.centroids.t()).argmax(-1)
        return ids.reshape(features.shape[:-1])

    @torch.no_grad()
    def fit(self, features: np.ndarray | torch.Tensor, vocab_size: int | None = None, niter: int = 20,
            seed: int = 0, verbose: bool = False) -> "VisualWords":
        """Spherical k-means (FAISS) on ``features [M, H]``; replaces the centroids in place."""
        import faiss

        x = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float32)
        k = int(vocab_size or self.vocab_size)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"codebook features must be [M, {self.dim}], got {x.shape}")
        if x.shape[0] < k:
            raise ValueError(f"fitting {k} visual words needs at least {k} patch features, got {x.shape[0]}; "
                             "give more images or a smaller vocab_size")
        x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)
        km = faiss.Kmeans(self.dim, k, niter=niter, seed=seed, spherical=True, verbose=verbose,
                          max_points_per_centroid=max(256, -(-x.shape[0] // k)))
        km.train(x)
        cent = F.normalize(torch.from_numpy(km.centroids.copy()), dim=-1).to(self.centroids.device)
        self.centroids = cent  # replaces the buffer (size may change)
        self.fitted.fill_(True)
        log.info("fitted %d visual words on %d patch features", k, x.shape[0])
        return self
