"""Names the command line offers before anything heavy is imported (``lsb-mm --help`` loads no torch).

``HEAD_KINDS`` are the built-in heads of the registry :data:`lsb_mm.heads.HEADS` (a test keeps the
two equal); ``POOLINGS`` are the pooling modes of ``hf:`` text encoders."""
from __future__ import annotations

__all__ = ["HEAD_KINDS", "POOLINGS"]

HEAD_KINDS = ("adapter", "clr", "llr", "none", "slr")
POOLINGS = ("cls", "mean", "max")
