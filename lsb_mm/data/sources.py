"""The three on-disk layouts that several readers share: caption sidecars, labelled folders, CSV tables.

- a caption sidecar: ``x.png`` + ``x.txt`` whose first line is the caption (Tux Paint's layout);
- a labelled folder: ``folder/<class>/<image>`` (sub-folders of a class are searched too);
- a CSV / TSV table (tab-separated when the name ends in ``.tsv``) with named columns.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from lsb_mm.errors import InputError
from lsb_mm.data.images import list_image_files

__all__ = ["sidecar_path", "read_caption", "labelled_classes", "read_csv"]


def sidecar_path(image: str) -> str:
    """Where the caption of ``image`` lives: the same path with ``.txt``."""
    return os.path.splitext(image)[0] + ".txt"


def read_caption(image: str) -> Tuple[Optional[str], Optional[str]]:
    """``(caption, None)`` from the first line of ``image``'s sidecar, or ``(None, why not)``."""
    side = sidecar_path(image)
    name = os.path.basename(side)
    if not os.path.isfile(side):
        return None, f"no caption sidecar {name}"
    with open(side, "rb") as f:
        first = f.readline()
    try:
        caption = first.decode("utf-8-sig").strip()  # a byte-order mark is not part of the caption
    except UnicodeDecodeError:
        return None, f"{name}:1 is not UTF-8 text"
    if not caption:
        return None, f"empty caption ({name}:1)"
    return caption, None


def labelled_classes(folder: str) -> Dict[str, List[str]]:
    """``{class: image paths}`` for every sub-folder of ``folder`` that holds images, sorted by name."""
    if not os.path.isdir(folder):
        raise InputError(f"labelled image folder {folder} does not exist")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    found = {c: list_image_files(os.path.join(folder, c)) for c in classes}
    return {c: paths for c, paths in found.items() if paths}


def read_csv(path: str, columns: Sequence[Tuple[str, str]]) -> Iterator[Tuple[int, Dict[str, str]]]:
    """Yield ``(line number, row)``; ``columns`` are ``(name, flag)`` pairs that must be present
    (the flag names the option that chose the column, for the error)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    sep = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=sep)
            cols = reader.fieldnames or []
            for key, flag in columns:
                if key not in cols:
                    raise InputError(f"{path}:1: no column {key!r} ({flag}); the columns are {cols}")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV/TSV table: {exc}") from None
