"""Shared by ``scripts/bench_*.py``: describe the machine and write JSON + a markdown table."""
from __future__ import annotations

import json
import os
import platform
from typing import Any, Dict, List

__all__ = ["machine_info", "write_benchmark"]


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
    """``out_dir/name.json`` (payload + machine) and ``out_dir/name.md`` (lines); prints the table."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
