"""The ``lsb-mm`` command line: one module per command (``encode``, ``train``, ``index``, ``search``,
``evaluate``, ``tasks``, ``serve``, ``misc``), what they share in ``common``, the top parser in ``main``."""
from lsb_mm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
