"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``): ~785 pictures with an English caption.

Each stamp is ``<name>.png`` with a sidecar ``<name>.txt`` whose first line is the English
caption (the other lines are translations); its category is its folder relative to the stamps
root (e.g. ``animals/birds``, 121 of them). ``*_mirror.png`` files are mirrored copies of another
stamp and SVG files are vector twins of a PNG stamp: both are left out. A PNG without a caption
is reported in :attr:`Stamps.skipped`, never dropped silently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from lsb_mm.errors import InputError
from lsb_mm.data.sources import read_caption

__all__ = ["Stamp", "Stamps", "load_tuxpaint", "link_labelled_folder", "TUXPAINT_PACKAGE", "TUXPAINT_ROOT"]

TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"


@dataclass
class Stamp:
    path: str
    caption: str
    category: str


@dataclass
class Stamps:
    stamps: List[Stamp]
    root: str
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stamps)

    def by_category(self) -> Dict[str, List[Stamp]]:
        out: Dict[str, List[Stamp]] = {}
        for s in self.stamps:
            out.setdefault(s.category, []).append(s)
        return out


def load_tuxpaint(root: str = TUXPAINT_ROOT) -> Stamps:
    """Every captioned PNG stamp under ``root``, sorted by path."""
    if not os.path.isdir(root):
        raise InputError(f"Tux Paint stamps not found at {root}; install them with: "
                         f"sudo apt-get install {TUXPAINT_PACKAGE}")
    stamps, skipped = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(".png") or name.lower().endswith("_mirror.png"):
                continue
            path = os.path.join(folder, name)
            caption, problem = read_caption(path)
            if caption is None:
                skipped.append({"source": path, "reason": f"no English caption: {problem}"})
                continue
            stamps.append(Stamp(path, caption, os.path.relpath(folder, root)))
    if not stamps:
        raise InputError(f"{root} holds no captioned PNG stamps")
    return Stamps(stamps, root, skipped)


def link_labelled_folder(stamps: Sequence[Stamp], folder: str) -> str:
    """A labelled folder (``category/stamp.png``, ``/`` in a category becomes ``__``) of symlinks to ``stamps``."""
    for s in stamps:
        d = os.path.join(folder, s.category.replace("/", "__"))
        os.makedirs(d, exist_ok=True)
        link = os.path.join(d, os.path.basename(s.path))
        if not os.path.lexists(link):
            os.symlink(s.path, link)
    return folder
