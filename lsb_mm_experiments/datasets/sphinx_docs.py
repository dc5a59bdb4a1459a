"""Section title -> section body from Sphinx HTML documentation (Debian ``python3-doc``, ``linux-doc``).

Both packages ship Sphinx-built HTML, where each section is ``<section id=...>`` opened by a
heading (``<h1>``..``<h6>``). A section's body is its own text, without its sub-sections (each is
a pair of its own). Sections with short bodies, and titles that occur more than once across the
pages ("Examples", "Introduction"), are dropped; :func:`load_doc_sections` says how many.
"""
from __future__ import annotations

import glob
import gzip
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from lsb_mm.errors import InputError

__all__ = ["DocSection", "DOC_PACKAGES", "doc_root", "parse_sphinx_sections", "load_doc_sections"]

# package -> (glob of its HTML root, what to install)
DOC_PACKAGES: Dict[str, str] = {
    "python3-doc": "/usr/share/doc/python3.*/html",
    "linux-doc": "/usr/share/doc/linux-doc-*/html",
}

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_SKIP = {"script", "style", "head", "nav"}
_NUMBERING = re.compile(r"^\s*(\d+\.)+(\d+)?\s+")  # "4.8.18. " / "2.1 " section numbers
_BLOCK = {"p", "div", "li", "dt", "dd", "pre", "tr", "br", "table", "ul", "ol", "dl", "blockquote"} | _HEADINGS


@dataclass
class DocSection:
    path: str
    anchor: str
    title: str
    body: str


class _SectionParser(HTMLParser):
    """Collects (anchor, title, own text) of every ``<section id=...>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[Optional[dict]] = []  # one entry per open <section> (None: no id)
        self.done: List[dict] = []
        self.skip = 0  # depth inside script / style / headerlink anchors
        self.heading: Optional[List[str]] = None

    def _current(self) -> Optional[dict]:
        return next((s for s in reversed(self.stack) if s is not None), None)

    def handle_starttag(self, tag: str, attrs) -> None:
        a = dict(attrs)
        if tag == "section":
            self.stack.append({"id": a["id"], "title": None, "text": []} if a.get("id") else None)
        elif tag in _SKIP or (tag == "a" and "headerlink" in (a.get("class") or "").split()):
            self.skip += 1
        elif tag in _HEADINGS and self._current() is not None and self._current()["title"] is None:
            self.heading = []
        if tag in _BLOCK and self._current() is not None and self.heading is None:
            self._current()["text"].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self.stack:
            s = self.stack.pop()
            if s is not None:
                self.done.append(s)
        elif tag in _SKIP or (tag == "a" and self.skip):
            self.skip = max(0, self.skip - 1)
        elif tag in _HEADINGS and self.heading is not None:
            cur = self._current()
            cur["title"] = " ".join("".join(self.heading).split())
            self.heading = None

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.heading is not None:
            self.heading.append(data)
        elif self._current() is not None:
            self._current()["text"].append(data)


def parse_sphinx_sections(html: str, path: str = "") -> List[DocSection]:
    """Every titled section of one Sphinx HTML page, in document order of its end tag."""
    p = _SectionParser()
    p.feed(html)
    p.close()
    out = []
    for s in p.done:
        body = re.sub(r"[ \t\r\f\v]+", " ", "".join(s["text"]))
        body = " ".join(line.strip() for line in body.splitlines() if line.strip())
        title = _NUMBERING.sub("", (s["title"] or "").replace("¶", "")).strip()
        if title and body:
            out.append(DocSection(path, s["id"], title, body))
    return out


def doc_root(package: str) -> str:
    """The HTML root of an installed documentation package, or InputError naming the apt package."""
    if package not in DOC_PACKAGES:
        raise InputError(f"unknown documentation package {package!r}; expected one of {sorted(DOC_PACKAGES)}")
    roots = sorted(r for r in glob.glob(DOC_PACKAGES[package]) if glob.glob(os.path.join(r, "**", "*.html"), recursive=True))
    if not roots:
        raise InputError(f"{package} is not installed (no HTML under {DOC_PACKAGES[package]}); "
                         f"install it with: apt-get install {package}")
    return roots[-1]


def _html_files(root: str) -> List[str]:
    skip = ("genindex", "search", "py-modindex", "_static", "_sources", "_images", "_downloads")
    files = glob.glob(os.path.join(root, "**", "*.html"), recursive=True) + \
        glob.glob(os.path.join(root, "**", "*.html.gz"), recursive=True)
    return sorted(f for f in files if not any(s in os.path.relpath(f, root).split(os.sep)[0] for s in skip))


def _read(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def load_doc_sections(packages: Sequence[str] = ("python3-doc",), min_words: int = 30,
                      roots: Optional[Iterable[str]] = None) -> Tuple[List[DocSection], Dict[str, int]]:
    """Sections of the given documentation packages (or of the HTML folders ``roots``) with at
    least ``min_words`` body words and a title unique across them (case-insensitive); returns
    ``(sections, counts)`` where ``counts`` reports pages read and what was dropped and why."""
    roots = list(roots) if roots is not None else [doc_root(p) for p in packages]
    found: List[DocSection] = []
    pages = 0
    for root in roots:
        if not os.path.isdir(root):
            raise InputError(f"documentation folder {root} does not exist")
        for path in _html_files(root):
            pages += 1
            found += parse_sphinx_sections(_read(path), path)
    short = [s for s in found if len(s.body.split()) < min_words]
    long_enough = [s for s in found if len(s.body.split()) >= min_words]
    seen: Dict[str, int] = {}
    for s in long_enough:
        seen[s.title.lower()] = seen.get(s.title.lower(), 0) + 1
    kept = [s for s in long_enough if seen[s.title.lower()] == 1]
    counts = {"pages": pages, "sections": len(found), "short_dropped": len(short),
              "repeated_title_dropped": len(long_enough) - len(kept), "kept": len(kept)}
    if not kept:
        raise InputError(f"no section with a unique title and >= {min_words} words under {roots}")
    return kept, counts
