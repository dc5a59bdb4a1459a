"""LexSemBridge heads: SLR, LLR, CLR (and ``none``), all reading only a :class:`TokenStream`.

Every head builds a vocabulary-space vector ``w`` (``[B, V]``, never materialised for SLR and
LLR) and modulates the dense embedding::

    a  = softmax(W_p · w + b_p)        over the d dimensions
    e' = normalize(a ⊙ e)

SLR and LLR are sparse: ``W_p · w`` is a sum of the columns of ``W_p`` of the tokens present,
weighted by the per-token value, computed with a segment max over ``(row, token)`` pairs and
an ``index_add``; memory is ``O(B·L·d)``, never ``O(B·L·V)``.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from lsb_mm.models.stream import TokenStream

__all__ = ["HEADS", "LSBHead", "NoneHead", "SLRHead", "LLRHead", "CLRHead", "AdapterHead", "build_head",
           "head_options", "modulation_strength", "modulation_rows"]

HEADS: Dict[str, type] = {}


def register_head(name: str):
    def deco(cls):
        HEADS[name] = cls
        cls.kind = name
        return cls

    return deco


class LSBHead(nn.Module):
    """Base class: the projection ``W_p`` (stored transposed, ``[V, d]``) and bias ``b_p``.

    ``init="zeros"`` (default) makes a new head the identity on normalised embeddings
    (uniform ``a``), so an untrained model is exactly its backbone; ``init="random"`` uses
    ``nn.Linear``'s default initialisation (as the reference code).
    """

    kind = "base"

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, init: str = "zeros"):
        super().__init__()
        if init not in ("zeros", "random"):
            raise ValueError(f"head init must be 'zeros' or 'random', got {init!r}")
        self.vocab_size, self.embed_dim, self.hidden_dim, self.init = int(vocab_size), int(embed_dim), int(hidden_dim), init
        self.proj_weight = nn.Parameter(torch.zeros(self.vocab_size, self.embed_dim))
        self.proj_bias = nn.Parameter(torch.zeros(self.embed_dim))
        if init == "random":
            bound = 1.0 / self.vocab_size ** 0.5
            nn.init.uniform_(self.proj_weight, -bound, bound)
            nn.init.uniform_(self.proj_bias, -bound, bound)

    def config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim, "init": self.init}

    def projected(self, stream: TokenStream) -> torch.Tensor:
        """``W_p · w`` as ``[B, d]`` (without bias)."""
        raise NotImplementedError

    def forward(self, stream: TokenStream) -> torch.Tensor:
        """Return the modulated, L2-normalised embedding ``[B, d]``."""
        e = stream.pooled
        if e.shape[-1] != self.embed_dim:
            raise ValueError(f"{self.kind} head expects embeddings of dim {self.embed_dim}, got {e.shape[-1]}")
        return F.normalize(self.modulation(stream).to(e.dtype) * e, dim=-1)

    def modulation(self, stream: TokenStream) -> torch.Tensor:
        """``a = softmax(W_p · w + b_p)`` as ``[B, d]``: the weight each dimension of ``e`` gets."""
        if stream.vocab_size != self.vocab_size:
            raise ValueError(f"{self.kind} head has vocab_size {self.vocab_size}, the token stream {stream.vocab_size}")
        logits = self.projected(stream).to(self.proj_bias.dtype) + self.proj_bias
        return torch.softmax(logits, dim=-1)

    # -- sparse core shared by SLR and LLR --------------------------------------------------
    def _sparse_max_project(self, ids: torch.Tensor, keep: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``sum_v W_p[:, v] * max_{j: t_j = v, keep_j} values_j`` per row, without a ``[B, V]`` or ``[B, L, V]`` tensor."""
        b = ids.shape[0]
        rows = torch.arange(b, device=ids.device).unsqueeze(1).expand_as(ids)[keep]
        toks = ids[keep]
        vals = values[keep]
        out = torch.zeros(b, self.embed_dim, dtype=self.proj_weight.dtype, device=ids.device)
        if toks.numel() == 0:
            return out
        keys = rows * self.vocab_size + toks
        uniq, inverse = torch.unique(keys, return_inverse=True)
        seg_max = torch.zeros(uniq.shape[0], dtype=vals.dtype, device=vals.device)
        seg_max = seg_max.scatter_reduce(0, inverse, vals, reduce="amax", include_self=False)
        contrib = self.proj_weight[uniq % self.vocab_size] * seg_max.unsqueeze(1).to(self.proj_weight.dtype)
        return out.index_add(0, uniq // self.vocab_size, contrib)


@register_head("none")
class NoneHead(nn.Module):
    """No modulation: the backbone embedding, normalised."""

    def __init__(self, vocab_size: int = 0, embed_dim: int = 0, hidden_dim: int = 0, init: str = "zeros"):
        super().__init__()
        self.vocab_size, self.embed_dim, self.hidden_dim, self.init = vocab_size, embed_dim, hidden_dim, init

    def config(self) -> Dict[str, Any]:
        return {"kind": "none", "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim, "init": self.init}

    def forward(self, stream: TokenStream) -> torch.Tensor:
        return F.normalize(stream.pooled, dim=-1)


@register_head("adapter")
class AdapterHead(nn.Module):
    """Control, not LexSemBridge: a residual linear map of the embedding, ``e' = normalize(e + W e)``.

    It reads no token: trained like a head (same data, steps, learning rates), it tells the lexical
    signal of SLR/LLR/CLR apart from any adaptation of the query side at all. ``W`` starts at zero
    (the identity), or with ``nn.Linear``'s initialisation for ``init="random"``.
    """

    def __init__(self, vocab_size: int = 0, embed_dim: int = 0, hidden_dim: int = 0, init: str = "zeros"):
        super().__init__()
        if init not in ("zeros", "random"):
            raise ValueError(f"head init must be 'zeros' or 'random', got {init!r}")
        self.vocab_size, self.embed_dim, self.hidden_dim, self.init = vocab_size, int(embed_dim), hidden_dim, init
        self.weight = nn.Parameter(torch.zeros(self.embed_dim, self.embed_dim))
        if init == "random":
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def config(self) -> Dict[str, Any]:
        return {"kind": "adapter", "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim, "init": self.init}

    def forward(self, stream: TokenStream) -> torch.Tensor:
        e = stream.pooled
        if e.shape[-1] != self.embed_dim:
            raise ValueError(f"adapter head expects embeddings of dim {self.embed_dim}, got {e.shape[-1]}")
        return F.normalize(e + e.to(self.weight.dtype) @ self.weight.t(), dim=-1)


@register_head("slr")
class SLRHead(LSBHead):
    """Statistical: ``w_v = s · [token v present]`` over non-special tokens; ``s`` learnable, init 1."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, init: str = "zeros"):
        super().__init__(vocab_size, embed_dim, hidden_dim, init)
        self.scale = nn.Parameter(torch.ones(()))

    def token_values(self, stream: TokenStream) -> torch.Tensor:
        """Each position's value before the per-token max, ``[B, L]`` (``s`` everywhere)."""
        return self.scale.expand(stream.ids.shape)

    def projected(self, stream: TokenStream) -> torch.Tensor:
        return self._sparse_max_project(stream.ids, stream.content_mask, self.token_values(stream))


@register_head("llr")
class LLRHead(LSBHead):
    """Learned: ``u_j = relu(θᵀ h_j + β)``, ``w_v = max_{j: t_j = v} u_j``; special tokens zeroed."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, init: str = "zeros"):
        super().__init__(vocab_size, embed_dim, hidden_dim, init)
        self.token_weight = nn.Linear(self.hidden_dim, 1)

    def token_weights(self, stream: TokenStream) -> torch.Tensor:
        """``u`` as ``[B, L]``."""
        return torch.relu(self.token_weight(stream.hidden.to(self.token_weight.weight.dtype))).squeeze(-1)

    token_values = token_weights  # each position's value before the per-token max

    def projected(self, stream: TokenStream) -> torch.Tensor:
        return self._sparse_max_project(stream.ids, stream.content_mask, self.token_weights(stream))


@register_head("clr")
class CLRHead(LSBHead):
    """Contextual: ``w = log(1 + relu(z))``, ``z`` the vocabulary logits of the input.

    ``z`` comes from the checkpoint's MLM / MIM head when the stream carries one
    (``stream.vocab_logits``), else from the tied projection ``z = g(summary) · Eᵀ`` against the
    vocabulary embeddings ``E`` (token embeddings, or the visual-word codebook); ``g`` is a
    learnable linear map initialised to the identity.

    ``w_norm="l2"`` (default) divides ``w`` by its L2 norm before the projection. Unlike SLR/LLR,
    whose ``w`` has a few dozen non-zero entries of order 1, CLR's ``w`` is dense over all ``V``
    tokens (30,522 for BERT): one gradient step moves the logits ``W_p · w`` by about
    ``lr · ||w||²``, thousands of times more than for SLR, which is why CLR diverged at head lr
    1e-2. With unit ``w`` a step moves them by about ``lr``, whatever ``V`` and the encoder's
    logit scale. ``"none"`` is the paper's unnormalised ``w`` (and what saved models from before
    the option mean).
    """

    W_NORMS = ("l2", "none")
    LEGACY_OPTIONS = {"w_norm": "none"}  # what a saved config without the option meant

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, init: str = "zeros", w_norm: str = "l2"):
        super().__init__(vocab_size, embed_dim, hidden_dim, init)
        if w_norm not in self.W_NORMS:
            raise ValueError(f"clr w_norm must be one of {self.W_NORMS}, got {w_norm!r}")
        self.w_norm = w_norm
        self.transform = nn.Linear(self.hidden_dim, self.hidden_dim)
        with torch.no_grad():
            self.transform.weight.copy_(torch.eye(self.hidden_dim))
            self.transform.bias.zero_()

    def vocab_logits(self, stream: TokenStream) -> torch.Tensor:
        """``z`` as ``[B, V]``."""
        if stream.vocab_logits is not None:
            return stream.vocab_logits(stream.summary)
        if stream.vocab_embeddings is None:
            raise ValueError("CLR needs vocabulary embeddings or an MLM/MIM head in the token stream; this encoder gives neither")
        g = self.transform(stream.summary.to(self.transform.weight.dtype))
        return g @ stream.vocab_embeddings.to(g.dtype).t()

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "w_norm": self.w_norm}

    def vocab_vector(self, stream: TokenStream) -> torch.Tensor:
        """``w`` as ``[B, V]`` (after the normalisation of ``w_norm``)."""
        w = torch.log1p(torch.relu(self.vocab_logits(stream)))
        if self.w_norm == "l2":  # see the class docstring: the logit scale no longer grows with V
            w = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return w

    def projected(self, stream: TokenStream) -> torch.Tensor:
        return self.vocab_vector(stream).to(self.proj_weight.dtype) @ self.proj_weight


BASE_CONFIG = ("kind", "vocab_size", "embed_dim", "hidden_dim", "init")


def build_head(kind: str, vocab_size: int, embed_dim: int, hidden_dim: int, init: str = "zeros", **options: Any) -> nn.Module:
    """Create a head by name (``none``, ``slr``, ``llr``, ``clr``, ``adapter``); ``options`` are the
    head's own settings (e.g. CLR's ``w_norm``)."""
    key = str(kind).lower()
    if key not in HEADS:
        raise ValueError(f"unknown head {kind!r}; expected one of {sorted(HEADS)}")
    try:
        return HEADS[key](vocab_size, embed_dim, hidden_dim, init, **options)
    except TypeError as exc:
        raise ValueError(f"head {key!r} does not take options {sorted(options)}: {exc}") from None


def head_options(config: Dict[str, Any]) -> Dict[str, Any]:
    """The head-specific options of a saved head ``config``; options it lacks take the value
    they had before they existed (``LEGACY_OPTIONS``), so an old folder loads as it was trained."""
    cls = HEADS.get(str(config.get("kind")).lower())
    extra = {k: v for k, v in config.items() if k not in BASE_CONFIG}
    return {**getattr(cls, "LEGACY_OPTIONS", {}), **extra}


def modulation_rows(head: nn.Module, streams) -> torch.Tensor:
    """``a`` of ``head`` for every row of ``streams`` (an iterable of token-stream batches), ``[N, d]`` on the CPU."""
    return torch.cat([head.modulation(s).float().cpu() for s in streams])


def modulation_strength(a: torch.Tensor) -> Dict[str, float]:
    """How far a head's modulation ``a [B, d]`` is from uniform (an untrained head's).

    ``max_over_min``: median over rows of ``max(a) / min(a)`` (1 = uniform); ``entropy``: mean of
    ``H(a) / log d`` (1 = uniform, lower = a few dimensions dominate).
    """
    a = a.detach().float()
    ratio = (a.max(-1).values / a.min(-1).values.clamp(min=1e-30)).median()
    ent = -(a * a.clamp(min=1e-30).log()).sum(-1) / torch.log(torch.tensor(float(a.shape[-1])))
    return {"max_over_min": float(ratio), "entropy": float(ent.mean())}
