"""LSBModel: a backbone, its modality adapters and LexSemBridge heads, with an encode API."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lsb_mm.models.encoders import Backbone, VisualWords, image_stream, text_stream
from lsb_mm.errors import InputError
from lsb_mm.models.heads import build_head, head_options
from lsb_mm.data.images import ImageInput, check_sequence, load_image, on_one_thread
from lsb_mm.models.stream import TokenStream

__all__ = ["LSBModel", "ROLES"]

log = logging.getLogger(__name__)
ROLES = ("query", "document")


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[ImageInput], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.items[i], index=i))


class LSBModel(nn.Module):
    """A text tower, an image tower, or both, with one LexSemBridge head per tower.

    Build with :func:`lsb_mm.create_model`, reload with :func:`lsb_mm.load_model`.

    Args:
        backbone: the wrapped encoder.
        head: head kind for every tower (``clr``, ``slr``, ``llr``, ``none``).
        text_head / image_head: per-tower override of ``head``.
        vocab_size: number of visual words of the image tower's codebook.
        fusion_q / fusion_p: apply the head on the query / document side (paper: True / False).
        head_init: ``zeros`` (a new head leaves embeddings unchanged) or ``random``.
        seed: seeds the initial codebook.
    """

    def __init__(self, backbone: Backbone, head: str = "clr", text_head: Optional[str] = None,
                 image_head: Optional[str] = None, vocab_size: int = 1024, fusion_q: bool = True,
                 fusion_p: bool = False, head_init: str = "zeros", seed: int = 0,
                 head_options: Optional[Dict[str, Dict[str, Any]]] = None):
        super().__init__()
        self.backbone = backbone
        self.fusion = {"query": bool(fusion_q), "document": bool(fusion_p)}
        opts = head_options or {}
        self.text_head = build_head(text_head or head, backbone.text_vocab_size, backbone.embed_dim,
                                    backbone.text_hidden_dim, head_init, **opts.get("text", {})) if backbone.has_text else None
        self.visual_words = VisualWords(vocab_size, backbone.image_hidden_dim, seed=seed) if backbone.has_image else None
        self.image_head = build_head(image_head or head, vocab_size, backbone.embed_dim, backbone.image_hidden_dim,
                                     head_init, **opts.get("image", {})) if backbone.has_image else None
        self.head_init = head_init
        self._image_transform = None
        self.name = getattr(backbone, "name", backbone.family)

    # -- properties --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def has_text(self) -> bool:
        return self.backbone.has_text

    @property
    def has_image(self) -> bool:
        return self.backbone.has_image

    @property
    def image_transform(self):
        """The evaluation preprocessing (PIL RGB -> tensor) of the image tower."""
        if self._image_transform is None:
            self._image_transform = self.backbone.image_transform()
        return self._image_transform

    def __repr__(self) -> str:
        heads = {k: h.kind for k, h in (("text", self.text_head), ("image", self.image_head)) if h is not None}
        return f"LSBModel({self.backbone.describe()}, heads={heads}, fusion={self.fusion})"

    # -- batch-level forward (with autograd; used by encode and by training) -------------
    def text_stream(self, texts: List[str]) -> TokenStream:
        batch = {k: v.to(self.device) for k, v in self.backbone.tokenize(list(texts)).items()}
        return text_stream(self.backbone, batch)

    def image_stream(self, pixels: torch.Tensor) -> TokenStream:
        return image_stream(self.backbone, self.visual_words, pixels.to(self.device))

    def embed(self, stream: TokenStream, role: str = "query", enhance: bool = True) -> torch.Tensor:
        """L2-normalised embedding of a token stream; the head applies if ``enhance`` and the role's fusion flag."""
        _check_role(role)
        head = self.text_head if stream.modality == "text" else self.image_head
        if enhance and self.fusion[role] and head is not None:
            return head(stream)
        return F.normalize(stream.pooled, dim=-1)

    def forward(self, texts: Optional[List[str]] = None, pixels: Optional[torch.Tensor] = None,
                role: str = "query", enhance: bool = True) -> Dict[str, torch.Tensor]:
        out = {}
        if texts is not None:
            out["text"] = self.embed(self.text_stream(texts), role, enhance)
        if pixels is not None:
            out["image"] = self.embed(self.image_stream(pixels), role, enhance)
        return out

    # -- encode API ----------------------------------------------------------------------
    def encode_query(self, inputs: Any, *, modality: Optional[str] = None, **options: Any):
        """Encode queries (texts or images) with the query-side head: ``encode_text`` /
        ``encode_image`` with ``role="query"``. Strings are texts; PIL images, ``pathlib.Path``
        objects and :class:`~lsb_mm.data.images.ImageBlob` are images (``modality="image"`` reads
        strings as image paths)."""
        return self._encode_role(inputs, "query", modality, options)

    def encode_document(self, inputs: Any, *, modality: Optional[str] = None, **options: Any):
        """Encode documents (texts or images) as an index holds them: the document side, which is
        the plain embedding unless the model applies its head to documents (``fusion_p``)."""
        return self._encode_role(inputs, "document", modality, options)

    def _encode_role(self, inputs: Any, role: str, modality: Optional[str], options: Dict[str, Any]):
        if "role" in options:
            raise InputError(f"encode_{role} sets the role itself; call encode_text / encode_image to choose it")
        return self.encode(inputs, modality if modality is not None else _modality_of(inputs), role, **options)

    def encode(self, inputs: Any, modality: str, role: str = "document", *, num_workers: int = 0, **options: Any):
        """Encode texts (``modality="text"``) or images (``"image"``) with the tower they need, as
        ``role``: the one path every caller of lsb-mm takes. ``num_workers`` decodes images in that
        many processes (texts need none); ``options`` go to :meth:`encode_text` / :meth:`encode_image`."""
        if modality == "text":
            return self.encode_text(inputs, role=role, **options)
        if modality == "image":
            return self.encode_image(inputs, role=role, num_workers=num_workers, **options)
        raise InputError(f"modality must be 'text' or 'image', got {modality!r}")

    def similarity(self, a: Any, b: Any) -> torch.Tensor:
        """Cosine similarity matrix ``[len(a), len(b)]`` of two embedding batches (numpy or torch,
        ``[d]`` or ``[N, d]``), as a float32 tensor: sentence-transformers' ``model.similarity``."""
        def as_2d(x: Any, what: str) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float().cpu()
            t = t.unsqueeze(0) if t.dim() == 1 else t
            if t.dim() != 2 or t.shape[1] != self.embed_dim:
                raise InputError(f"similarity: {what} must be [N, {self.embed_dim}] embeddings, got shape {tuple(t.shape)}")
            return F.normalize(t, dim=-1)

        return as_2d(a, "a") @ as_2d(b, "b").T

    def encode_text(self, texts: str | Sequence[str], role: str = "document", batch_size: int = 64,
                    show_progress_bar: Optional[bool] = None, convert_to: str = "numpy", enhance: bool = True):
        """Encode texts to float32, L2-normalised ``[N, d]`` (``[d]`` for a single string).

        The default ``role="document"`` gives what an index holds (the plain embedding unless the
        model applies its head to documents); ``role="query"`` applies the query-side head (or call
        :meth:`encode_query`); ``enhance=False`` gives the plain backbone embedding.
        """
        if not self.has_text:
            raise InputError(f"{self.name}: this model has no text tower")
        single = isinstance(texts, str)
        texts = [texts] if single else texts
        check_sequence(texts, "texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] is a {type(t).__name__}, expected str")
        _check_role(role)
        _check_batch_size(batch_size)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        out = torch.empty(len(texts), self.embed_dim, dtype=torch.float32)
        with torch.inference_mode():
            for idx in _progress(chunks, show_progress_bar, "encode text"):
                emb = self.embed(self.text_stream([texts[i] for i in idx]), role, enhance)
                out[torch.as_tensor(idx)] = emb.float().cpu()
        return _convert(out[0] if single else out, convert_to)

    def encode_image(self, images: ImageInput | Sequence[ImageInput], role: str = "document", batch_size: int = 64,
                     show_progress_bar: Optional[bool] = None, convert_to: str = "numpy", enhance: bool = True,
                     num_workers: int = 0):
        """Encode images (file paths, PIL images in any mode, or :class:`~lsb_mm.data.images.ImageBlob` bytes) to float32, L2-normalised ``[N, d]``.

        ``role`` as in :meth:`encode_text` (default ``"document"``). A missing or undecodable file
        raises :class:`~lsb_mm.errors.ImageLoadError` naming it.
        """
        if not self.has_image:
            raise InputError(f"{self.name}: this model has no image tower")
        single = not isinstance(images, (list, tuple)) and not isinstance(images, np.ndarray)
        images = [images] if single else list(images)
        check_sequence(images, "images")
        _check_role(role)
        _check_batch_size(batch_size)
        outs = []
        with torch.inference_mode():
            for pixels in _progress(self._pixel_batches(images, batch_size, num_workers), show_progress_bar,
                                    "encode images", total=-(-len(images) // batch_size)):
                outs.append(self.embed(self.image_stream(pixels), role, enhance).float().cpu())
        out = torch.cat(outs)
        return _convert(out[0] if single else out, convert_to)

    def _pixel_batches(self, images: Sequence[ImageInput], batch_size: int, num_workers: int = 0) -> Iterable[torch.Tensor]:
        ds = _ImageDataset(images, self.image_transform)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        return loader if num_workers else on_one_thread(loader)  # workers already run on one thread

    # -- visual words ----------------------------------------------------------------------
    def fit_codebook(self, images: Sequence[ImageInput], vocab_size: Optional[int] = None, batch_size: int = 64,
                     max_features: int = 200_000, niter: int = 20, seed: int = 0,
                     show_progress_bar: Optional[bool] = None, num_workers: int = 0) -> "LSBModel":
        """Fit the visual-word codebook with FAISS spherical k-means on the images' patch features.

        A different ``vocab_size`` re-creates the image head for the new vocabulary (its
        projection starts afresh).
        """
        if not self.has_image:
            raise InputError(f"{self.name}: this model has no image tower")
        images = list(images)
        check_sequence(images, "images")
        feats = []
        with torch.inference_mode():
            for pixels in _progress(self._pixel_batches(images, batch_size, num_workers), show_progress_bar,
                                    "patch features", total=-(-len(images) // batch_size)):
                h = self.backbone.image_features(pixels.to(self.device)).hidden
                feats.append(h.reshape(-1, h.shape[-1]).float().cpu())
        x = torch.cat(feats)
        if x.shape[0] > max_features:
            g = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(x.shape[0], generator=g)[:max_features]]
        new_v = int(vocab_size or self.visual_words.vocab_size)
        self.visual_words.fit(x, vocab_size=new_v, niter=niter, seed=seed)
        self.resize_visual_vocab(new_v, seed=seed)
        return self

    def resize_visual_vocab(self, vocab_size: int, seed: int = 0) -> None:
        """Give the codebook and the image head ``vocab_size`` entries (the head starts afresh,
        initialised from ``seed`` without touching the global random state)."""
        vw = self.visual_words
        if vw.vocab_size != vocab_size:
            vw.centroids = VisualWords(vocab_size, vw.dim).centroids.to(vw.centroids.device)
        if self.image_head.vocab_size != vocab_size:
            log.warning("visual vocabulary changed from %d to %d: the image head is re-initialised",
                        self.image_head.vocab_size, vocab_size)
            old = self.image_head
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.image_head = build_head(old.config()["kind"], vocab_size, old.embed_dim, old.hidden_dim,
                                             self.head_init, **head_options(old.config())).to(self.device)

    # -- persistence -------------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        """The JSON-able description from which :func:`lsb_mm.load_model` rebuilds this model."""
        return {
            "backbone": self.backbone.spec(),
            "embed_dim": self.embed_dim,
            "text_head": self.text_head.config() if self.text_head is not None else None,
            "image_head": self.image_head.config() if self.image_head is not None else None,
            "visual_words": {"vocab_size": self.visual_words.vocab_size, "dim": self.visual_words.dim}
            if self.visual_words is not None else None,
            "fusion": dict(self.fusion),
            "head_init": self.head_init,
        }

    def save_pretrained(self, folder: str, training: Optional[Dict[str, Any]] = None) -> str:
        """Save everything (backbone, heads, projection, scale, codebook, tokenizer and
        preprocessing config) as JSON + safetensors, with a model card (``README.md``), atomically.
        ``training`` is what a run recorded, for the card (``lsb-mm train`` passes it). Returns the folder."""
        from lsb_mm.models.serialization import save_model

        return save_model(self, folder, training)

    def fingerprint(self) -> str:
        """A short hash of the configuration and every weight: identifies the embeddings' source."""
        from lsb_mm.models.serialization import state_fingerprint

        return state_fingerprint(self)

    def document_fingerprint(self) -> str:
        """A short hash of what ``role="document"`` embeddings depend on: the backbone (and codebook),
        plus the heads only when they apply to documents (``fusion_p``). Models that differ only in
        their query-side heads give the same documents, and the same document fingerprint."""
        import hashlib
        import json

        from lsb_mm.files import tensor_digest

        parts = {k: v for k, v in self.state_dict().items()
                 if self.fusion["document"] or not k.startswith(("text_head.", "image_head."))}
        cfg = self.config()
        desc = {"backbone": cfg["backbone"], "visual_words": cfg["visual_words"], "fusion_p": self.fusion["document"],
                **({"heads": [cfg["text_head"], cfg["image_head"]]} if self.fusion["document"] else {})}
        h = hashlib.sha256(json.dumps(desc, sort_keys=True).encode())
        h.update(tensor_digest({k: v.detach().cpu() for k, v in parts.items()}).encode())
        return h.hexdigest()[:16]


def _modality_of(inputs: Any) -> str:
    """``text`` for a string or a list of strings, ``image`` for images; a mixed list is refused."""
    from PIL import Image

    from lsb_mm.data.images import ImageBlob

    def kind(x: Any) -> Optional[str]:
        if isinstance(x, str):
            return "text"
        if isinstance(x, (Image.Image, ImageBlob, os.PathLike)):
            return "image"
        return None

    one = kind(inputs)
    if one is not None:
        return one
    if isinstance(inputs, (list, tuple)) and inputs:
        kinds = {kind(x) for x in inputs}
        if kinds == {"text"} or kinds == {"image"}:
            return kinds.pop()
        if None in kinds:
            bad = next(i for i, x in enumerate(inputs) if kind(x) is None)
            raise InputError(f"inputs[{bad}] is a {type(inputs[bad]).__name__}; expected str (text) or an image "
                             "(PIL image, pathlib.Path, ImageBlob)")
        raise InputError("inputs mix texts and images; encode each kind in its own call")
    raise InputError(f"expected a text, an image or a non-empty list of them, got {type(inputs).__name__}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InputError(f"role must be one of {ROLES}, got {role!r}")


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _progress(it, show: Optional[bool], desc: str, total: Optional[int] = None):
    if show is None:
        n = total if total is not None else len(it)
        show = n > 4 and sys.stderr.isatty()
    return tqdm(it, desc=desc, total=total, disable=not show, unit="batch")


def _convert(t: torch.Tensor, convert_to: str):
    if convert_to == "numpy":
        return t.numpy()
    if convert_to == "torch":
        return t
    raise InputError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
