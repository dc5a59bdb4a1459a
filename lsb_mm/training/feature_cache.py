"""Memoised features of a frozen image tower, keyed by the content of the pixels.

When the image tower does not train (LiT-style: towers locked; projections and heads train),
its features for a given input never change. Computing them once per distinct input makes every
later epoch, codebook fit and evaluation nearly free::

    cache = ImageFeatureCache(max_gb=4)
    with cache.attach(model):            # also: Trainer(config, feature_cache=cache)
        model.fit_codebook(paths)        # computes the features once ...
        model.encode_image(paths)        # ... and reads them back here

Keys are a BLAKE2 digest of each pixel tensor, so an identical image reached by another path hits,
and a different crop misses. One cache serves one tower: attaching it to a tower with other
weights empties it first; while attached, a second tower is accepted only with identical weights
(the same features), any other is refused. The cache refuses to run while any of the tower's parameters trains
(a stale feature would be silently wrong); a frozen tower is in eval mode by construction in the
trainer and in ``create_model``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from lsb_mm.models.encoders.base import Backbone, ImageFeatures
from lsb_mm.training.tower_cache import tower_digest, tower_frozen, tower_parameters

__all__ = ["ImageFeatureCache", "image_tower_frozen", "serve_locked_images"]

log = logging.getLogger(__name__)


def _image_modules(tower: Backbone) -> List[torch.nn.Module]:
    """Modules holding image-tower parameters (batch norm included): they must be in eval mode."""
    return [m for name, m in tower.named_modules()
            if any(tower.tower_of(f"{name}.{n}" if name else n) == "image" for n, _ in m.named_parameters(recurse=False))]


def image_tower_frozen(model) -> bool:
    """Whether no parameter of ``model``'s image tower trains (its features can be cached)."""
    return tower_frozen(model, "image")


class ImageFeatureCache:
    """Content-addressed store of ``(hidden, pooled, summary)`` rows of one frozen image tower."""

    def __init__(self, max_gb: float = 4.0):
        if max_gb <= 0:
            raise ValueError(f"max_gb must be > 0, got {max_gb!r}")
        self.max_bytes = int(max_gb * (1 << 30))
        self.rows: Dict[bytes, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.tower_digest: str = ""
        self.nbytes = self.hits = self.misses = 0
        self._full_warned = False
        self._attached = 0  # towers served now: several only if their weights are identical (rows are keyed by pixels)

    def __len__(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        self.rows.clear()
        self.nbytes = 0
        self._full_warned = False

    def stats(self) -> Dict[str, float]:
        return {"items": len(self.rows), "gib": round(self.nbytes / (1 << 30), 3), "hits": self.hits, "misses": self.misses}

    @contextlib.contextmanager
    def attach(self, model) -> Iterator["ImageFeatureCache"]:
        """Serve ``model``'s image-tower features from the cache inside the ``with`` block."""
        tower = model.backbone.image_tower()
        if "image_features" in vars(tower):
            raise RuntimeError("image feature cache: this image tower is already attached to a cache")
        digest = tower_digest(model, "image")
        if self._attached and digest != self.tower_digest:
            raise RuntimeError("image feature cache: already attached to an image tower with other weights; one cache "
                               "serves one tower at a time (leave the first `with cache.attach(...)` block, or use a "
                               "second cache)")
        if digest != self.tower_digest:
            if self.rows:
                log.info("image feature cache: another tower (%s); emptied", digest[:12])
            self.clear()
            self.tower_digest = digest
        params, modules = tower_parameters(model, "image"), _image_modules(tower)
        compute = tower.image_features  # the bound method of the tower's class

        def cached(pixels: torch.Tensor) -> ImageFeatures:
            if torch.is_grad_enabled() and any(p.requires_grad for p in params):
                raise RuntimeError("image feature cache: the image tower has trainable parameters; "
                                   "features of a training tower cannot be cached")
            if any(m.training for m in modules):
                raise RuntimeError("image feature cache: the image tower is in train mode (batch statistics, "
                                   "dropout); call .eval() on it to cache its features")
            return self._features(compute, pixels)

        tower.image_features = cached  # an instance attribute shadows the method
        self._attached += 1
        try:
            yield self
        finally:
            del tower.image_features
            self._attached -= 1

    def _features(self, compute, pixels: torch.Tensor) -> ImageFeatures:
        flat = pixels.detach().to("cpu", torch.float32).contiguous().reshape(pixels.shape[0], -1)
        keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16, person=str(tuple(pixels.shape[1:])).encode()[:16]).digest()
                for row in flat]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # one computation per distinct input
        todo = [i for k, i in first.items() if k not in self.rows]
        fresh = {}
        if todo:  # float32 without autocast: the same features whatever the caller's precision
            with torch.autocast(pixels.device.type, enabled=False):
                f = compute(pixels[todo].float())
            for j, i in enumerate(todo):
                fresh[keys[i]] = (f.hidden[j], f.pooled[j], f.summary[j])
            self._store(fresh)
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        got = [fresh.get(k) or self.rows[k] for k in keys]
        return ImageFeatures(hidden=torch.stack([g[0] for g in got]), pooled=torch.stack([g[1] for g in got]),
                             summary=torch.stack([g[2] for g in got]))

    def _store(self, fresh: Dict[bytes, Tuple[torch.Tensor, ...]]) -> None:
        for key, row in fresh.items():
            size = sum(t.numel() * t.element_size() for t in row)
            if self.nbytes + size > self.max_bytes:
                if not self._full_warned:
                    log.warning("image feature cache full (%.2f GiB, %d items): later images are computed each time",
                                self.nbytes / (1 << 30), len(self.rows))
                    self._full_warned = True
                return
            self.rows[key] = tuple(t.detach().clone() for t in row)  # own storage: not a view of the batch
            self.nbytes += size


@contextlib.contextmanager
def serve_locked_images(model, kinds, cache: Optional[ImageFeatureCache], max_gb: float
                        ) -> Iterator[Optional[ImageFeatureCache]]:
    """Inside the block, ``model``'s locked image tower reads its features from ``cache`` (a new
    one of ``max_gb`` when None and ``max_gb`` > 0); yields the cache in use, or ``cache`` unused
    when no image side is in ``kinds``, the tower trains, or there is no cache."""
    if "image" not in kinds or not image_tower_frozen(model) or (cache is None and max_gb <= 0):
        yield cache
        return
    cache = ImageFeatureCache(max_gb) if cache is None else cache
    with cache.attach(model):
        yield cache
