"""Names the command line offers before anything heavy is imported (``lsb-mm --help`` loads no torch).

``HEAD_KINDS`` are the built-in heads of the registry :data:`lsb_mm.models.heads.HEADS` (a test keeps the
two equal); ``POOLINGS`` are the pooling modes of ``hf:`` text encoders; :func:`is_repo_id` tells a
Hugging Face hub id from a path."""
from __future__ import annotations

import re

__all__ = ["HEAD_KINDS", "POOLINGS", "is_repo_id"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_repo_id(ident: str) -> bool:
    """Whether ``ident`` (``org/name`` or ``name``, with an optional ``@revision``) is shaped like a hub id."""
    return bool(_REPO_ID.match(ident.partition("@")[0])) and ".." not in ident

HEAD_KINDS = ("adapter", "clr", "llr", "none", "slr")
POOLINGS = ("cls", "mean", "max")
