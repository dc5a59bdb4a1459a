"""Hard-negative mining: for each training query, the top-ranked training documents that are not
its positives (exact inner-product search with FAISS)."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from lsb_mm.data.training_data import TrainData

__all__ = ["mine_negatives"]


def mine_negatives(data: TrainData, encode, top_k: int) -> Dict[int, List[str]]:
    """``{example index: up to top_k mined negatives}``; ``encode(items, role)`` embeds training
    queries (``role="query"``) or documents (``"document"``) as normalised float32 rows."""
    import faiss

    pool = list(dict.fromkeys(p for e in data.examples for p in e.pos))
    docs = encode(pool, "document")
    queries = encode([e.query for e in data.examples], "query")
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    k = min(len(pool), top_k + max(len(e.pos) for e in data.examples) + 1)
    _, top = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    mined = {}
    for i, e in enumerate(data.examples):
        own = set(e.pos) | {e.query}
        mined[i] = [pool[j] for j in top[i] if j >= 0 and pool[j] not in own][:top_k]
    return mined
