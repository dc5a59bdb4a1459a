"""Search: the FAISS index and its folder format, index choice, binary codes, BM25, fusion and build_index."""
