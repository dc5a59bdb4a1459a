"""Self-contained HTML galleries of search results (thumbnails inlined, every text escaped)."""
from __future__ import annotations

import base64
import html
import io
import os
from typing import Dict, List, Optional, Sequence

from lsb_mm.files import write_text
from lsb_mm.data.images import load_image

__all__ = ["thumbnail_data_uri", "write_gallery"]

STYLE = """body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px} .query{margin:18px 0 6px;font-weight:600} .row{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;width:150px;font-size:12px}
.card img{width:150px;height:150px;object-fit:contain;background:#eee;image-rendering:pixelated}
.q{border-color:#36c} .rel{border:2px solid #2a2;background:#f3fbf3} .rank{font-weight:700} .score{color:#666} .name{color:#888;word-break:break-all}"""


def thumbnail_data_uri(path: str, size: int = 150) -> str:
    """A PNG thumbnail of ``path`` as a data: URI (the page needs no files beside it)."""
    img = load_image(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _card(img_path: Optional[str], lines: Sequence[str], cls: str = "card") -> str:
    img = f'<img src="{thumbnail_data_uri(img_path)}" alt="{html.escape(os.path.basename(img_path))}">' if img_path else ""
    return f'<div class="{cls}">{img}' + "".join(f"<div>{line}</div>" for line in lines) + "</div>"


def write_gallery(path: str, title: str, results: List[Dict]) -> str:
    """``results``: one dict per query ``{"query": str, "query_image": path or None, "note": str?, "hits": [{rank,
    score, id, path?, caption?, text?, relevant?}]}``; relevant hits get a green frame. Writes one HTML file;
    returns its path."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style>"
             f"</head><body><h1>{esc(title)}</h1>"]
    for res in results:
        note = f' <span class="score">{esc(res["note"])}</span>' if res.get("note") else ""
        parts.append(f'<div class="query">Query: {esc(str(res["query"]))}{note}</div><div class="row">')
        if res.get("query_image"):
            parts.append(_card(res["query_image"], ["<span class='rank'>query</span>"], "card q"))
        for h in res["hits"]:
            lines = [f"<span class='rank'>#{h['rank']}</span> <span class='score'>{h['score']:.4f}</span>"]
            if h.get("caption") or h.get("text"):
                lines.append(esc(str(h.get("caption") or h.get("text"))[:160]))
            lines.append(f"<span class='name'>{esc(str(h['id']))}</span>")
            parts.append(_card(h.get("path"), lines, "card rel" if h.get("relevant") else "card"))
        parts.append("</div>")
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))
