"""Linux man pages (Debian ``manpages`` / ``manpages-dev``): NAME line -> page body.

Each page gives a natural (query, passage) pair: the one-line NAME summary and the text of
the page. Roff markup is stripped to plain text; ``.so`` redirect stubs are skipped.
"""
from __future__ import annotations

import gzip
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Iterable, List, Optional

from lsb_mm.errors import InputError

__all__ = ["ManPage", "load_manpages", "manpage_files", "roff_to_text", "DEFAULT_PACKAGES"]

DEFAULT_PACKAGES = ("manpages", "manpages-dev")

_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\\((em|en)"), "-"), (re.compile(r"\\\(aq"), "'"), (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((bu|co|rg|tm|mu|de|ha|ti|ga|ul)"), " "), (re.compile(r"\\\[[^\]]*\]"), " "),
    (re.compile(r"\\\*\((..)|\\\*(.)"), ""), (re.compile(r"\\[,/&:%]"), ""), (re.compile(r"\\-"), "-"),
    (re.compile(r"\\e"), "\\\\"), (re.compile(r"\\[ ~0|^]"), " "), (re.compile(r'\\".*$', re.M), ""),
    (re.compile(r"\\s[-+]?\d"), ""), (re.compile(r"\\c"), ""),
]


@dataclass
class ManPage:
    path: str
    name: str  # e.g. "open, openat, creat"
    summary: str  # e.g. "open and possibly create a file"
    body: str  # plain text of the page after NAME

    @property
    def name_line(self) -> str:
        return f"{self.name} - {self.summary}"


def roff_to_text(src: str) -> str:
    """Plain text of roff source: macros dropped, fonts and escapes resolved."""
    out: List[str] = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"")) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].partition(" ")
            if macro in ("B", "I", "SM", "SB", "BR", "BI", "IR", "IB", "RB", "RI", "SS", "SH", "TP", "IP", "UR", "MT"):
                if macro in ("BR", "BI", "IR", "IB", "RB", "RI"):
                    rest = "".join(p.strip('"') for p in re.findall(r'"[^"]*"|\S+', rest))
                out.append(rest.strip('"'))
            continue
        out.append(line)
    text = "\n".join(out)
    for pat, rep in _ESCAPES:
        text = pat.sub(rep, text)
    return re.sub(r"[ \t]+", " ", text).strip()


def _sections(src: str):
    """Yield (section title, roff body) for each .SH of a page."""
    parts = re.split(r"^\.SH\s+(.*)$", src, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        yield parts[i].strip().strip('"').upper(), parts[i + 1]


def parse_manpage(path: str) -> Optional[ManPage]:
    """Parse one page; None for redirect stubs or pages without a usable NAME line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        src = f.read()
    if src.lstrip().startswith(".so "):
        return None
    name_line, body = None, []
    for title, sec in _sections(src):
        if title == "NAME" and name_line is None:
            name_line = " ".join(roff_to_text(sec).split())
        elif name_line is not None:
            body.append(f"{title.title()}\n{roff_to_text(sec)}")
    if not name_line:
        return None
    m = re.match(r"^(.*?)\s+-+\s+(.*)$", name_line)
    if not m or not m.group(2).strip():
        return None
    return ManPage(path=path, name=m.group(1).strip(), summary=m.group(2).strip(), body="\n\n".join(body).strip())


def manpage_files(packages: Iterable[str] = DEFAULT_PACKAGES) -> List[str]:
    """The page files installed by Debian ``packages`` (via ``dpkg -L``), sorted."""
    files: List[str] = []
    missing = []
    for pkg in packages:
        try:
            res = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            res = None
        if res is None or res.returncode != 0:
            missing.append(pkg)
            continue
        files += [p for p in res.stdout.splitlines() if re.search(r"/man/man\d[^/]*/[^/]+\.\d\w*(\.gz)?$", p)
                  and os.path.isfile(p)]
    if missing and not files:
        raise InputError(f"Debian packages {missing} are not installed; run: sudo apt-get install {' '.join(missing)}")
    seen, unique = set(), []
    for p in sorted(set(files)):  # several names can link to one page
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def load_manpages(packages: Iterable[str] = DEFAULT_PACKAGES, limit: Optional[int] = None,
                  min_body_chars: int = 200) -> List[ManPage]:
    """Parsed pages with a NAME summary and a body of at least ``min_body_chars`` characters."""
    pages: List[ManPage] = []
    for path in manpage_files(packages):
        page = parse_manpage(path)
        if page is not None and len(page.body) >= min_body_chars:
            pages.append(page)
            if limit and len(pages) >= limit:
                break
    return pages
