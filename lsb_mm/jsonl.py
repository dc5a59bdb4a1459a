"""Reading JSONL files with errors that name ``file:line``."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Optional, Tuple

from .errors import InputError

__all__ = ["iter_jsonl"]


def iter_jsonl(path: str, on_error: Optional[Callable[[str, str], None]] = None) -> Iterator[Tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for each non-blank line.

    A line that is not JSON raises InputError naming ``file:line``, or, with ``on_error``, is
    reported as ``on_error("file:line", reason)`` and skipped.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
                if on_error is None:
                    raise InputError(f"{path}:{n}: {reason}") from exc
                on_error(f"{path}:{n}", reason)
