"""Why a query is modulated the way it is: the tokens (or visual words) behind a head's ``a``.

For SLR and LLR, ``W_p · w = sum_v w_v W_p[v]`` over the query's content tokens; for CLR over the
whole vocabulary (the entries with the largest contributions are listed, in the query or not).
Since ``a = softmax(W_p · w + b_p)`` ignores a constant shift, a token's contribution is
``w_v (W_p[v] - mean(W_p[v]))``; its size (L2 norm) ranks the tokens, and its largest entries are
the dimensions that token amplifies.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from lsb_mm.errors import InputError
from lsb_mm.models.heads import modulation_rows, modulation_strength

__all__ = ["explain", "modulation_of"]


def _row_weights(head, stream, row: int):
    """``(ids [n], w [n])``: the non-zero entries of row ``row`` of the head's vocabulary vector."""
    if hasattr(head, "token_values"):  # SLR / LLR: the max over the positions of each content token
        keep = stream.content_mask[row]
        ids, vals = stream.ids[row][keep], head.token_values(stream)[row][keep].float()
        if ids.numel() == 0:
            return ids, vals
        uniq, inverse = torch.unique(ids, return_inverse=True)
        best = torch.zeros(uniq.shape[0], dtype=vals.dtype).scatter_reduce(0, inverse, vals, reduce="amax", include_self=False)
        return uniq, best
    w = head.vocab_vector(stream)[row].float()  # CLR: dense over the vocabulary
    nz = torch.nonzero(w > 0).squeeze(1)
    return nz, w[nz]


@torch.no_grad()
def explain(model, text: Optional[str] = None, image: Any = None, top: int = 10, dims: int = 3) -> Dict[str, Any]:
    """The ``top`` tokens (visual words) that shape the query-side modulation of ``text`` or
    ``image``, each with its weight ``w``, the size of its contribution and the ``dims`` dimensions
    it raises most; plus the modulation strength and the most amplified dimensions overall."""
    if (text is None) == (image is None):
        raise InputError("explain: give a text or an image")
    if not isinstance(top, int) or top < 1 or not isinstance(dims, int) or dims < 1:
        raise InputError(f"explain: top and dims must be positive integers, got {top!r}, {dims!r}")
    if text is not None:
        if not model.has_text:
            raise InputError(f"{model.name}: this model has no text tower")
        stream, head = model.text_stream([text]), model.text_head
    else:
        if not model.has_image:
            raise InputError(f"{model.name}: this model has no image tower")
        from lsb_mm.data.images import load_image

        pixels = model.image_transform(load_image(image)).unsqueeze(0)
        stream, head = model.image_stream(pixels), model.image_head
    if head is None or not hasattr(head, "modulation"):
        kind = getattr(head, "kind", None)
        raise InputError(f"explain: the {kind!r} head has no token-aware modulation to explain (SLR, LLR and CLR have)")
    a = head.modulation(stream)[0].float()
    ids, w = _row_weights(head, stream, 0)
    proj = head.proj_weight.detach().float()
    if ids.numel():
        centred = proj[ids] - proj[ids].mean(dim=1, keepdim=True)
        contrib = w.unsqueeze(1) * centred
        score = contrib.norm(dim=1)
        order = torch.argsort(score, descending=True)[:top]
    else:
        order = torch.zeros(0, dtype=torch.long)
    if text is not None:
        names = model.backbone.text_token_names(ids[order].tolist())
    else:
        where = {int(v): torch.nonzero(stream.ids[0] == v).squeeze(1).tolist() for v in ids[order].tolist()}
        names = [f"visual word {v} (patches {where[v][:8]})" for v in ids[order].tolist()]
    d = a.shape[0]
    tokens: List[Dict[str, Any]] = []
    for rank, (j, name) in enumerate(zip(order.tolist(), names), 1):
        c = contrib[j]
        up = torch.argsort(c, descending=True)[:dims].tolist()
        tokens.append({"rank": rank, "token": name, "id": int(ids[j]), "w": round(float(w[j]), 6),
                       "contribution": round(float(score[j]), 6), "raises_dims": up})
    gain = a * d  # 1 = the uniform share
    top_dims = torch.argsort(gain, descending=True)[:dims * 3].tolist()
    return {"query": text if text is not None else str(image), "head": head.kind, "tokens": tokens,
            "modulation": modulation_strength(a.unsqueeze(0)),
            "amplified_dims": [{"dim": i, "gain": round(float(gain[i]), 4)} for i in top_dims],
            "uniform_entropy": round(math.log(d), 4)}


def modulation_of(model, texts: Sequence[str] = (), images: Sequence[Any] = (), batch_size: int = 128) -> Optional[Dict[str, float]]:
    """Modulation strength (:func:`lsb_mm.models.heads.modulation_strength`) of the query-side heads over
    ``texts`` (text head) and ``images`` (image head) as queries together, or None when none of them
    meets a head that modulates (``none``, ``adapter``) or the model has no query-side fusion."""
    if not model.fusion["query"]:
        return None
    parts = []
    with torch.inference_mode():
        for kind, items, head in (("text", list(texts), model.text_head), ("image", list(images), model.image_head)):
            if not items or head is None or not hasattr(head, "modulation"):
                continue
            streams = (model.image_stream(px) for px in model._pixel_batches(items, batch_size)) if kind == "image" \
                else (model.text_stream(items[s:s + batch_size]) for s in range(0, len(items), batch_size))
            parts.append(modulation_rows(head, streams))
    return modulation_strength(torch.cat(parts)) if parts else None
