"""Shared by ``scripts/bench_*.py``: describe the machine and write JSON + a markdown table."""
from __future__ import annotations

import json
import os
import platform
from typing import Any, Callable, Dict, List, Optional

from lsb_mm.files import write_text

__all__ = ["machine_info", "render_saved", "write_benchmark", "saved_row", "save_row"]


def machine_info() -> Dict[str, Any]:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import faiss

        info.update(faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus())
    except ImportError:  # pragma: no cover
        pass
    return info


def write_benchmark(out_dir: str, name: str, payload: Dict[str, Any], lines: List[str]) -> None:
    """``out_dir/name.json`` (machine + payload; a payload's own ``machine`` wins) and ``out_dir/name.md``
    (lines), each written atomically; prints the table."""
    os.makedirs(out_dir, exist_ok=True)
    for ext, text in (("json", json.dumps({"machine": machine_info(), **payload}, indent=2)), ("md", "\n".join(lines) + "\n")):
        write_text(os.path.join(out_dir, f"{name}.{ext}"), text)
    print("\n".join(lines))


def render_saved(path: str, render: Callable[[Dict[str, Any]], List[str]]) -> int:
    """Re-write the markdown of a saved result JSON (``--render``): tables and verdicts from its numbers."""
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    out_dir, name = os.path.split(os.path.splitext(path)[0])
    write_benchmark(out_dir or ".", name, payload, render(payload))
    return 0


def saved_row(path: str, settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The result row a resumable benchmark saved at ``path``, if it was measured with ``settings``."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        row = json.load(f)
    return row if row.get("settings") == settings else None


def save_row(path: str, row: Dict[str, Any]) -> None:
    """Write one result row (JSON) atomically, as soon as it is measured."""
    write_text(path, json.dumps(row, indent=2))
