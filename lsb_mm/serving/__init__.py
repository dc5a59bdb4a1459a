"""``lsb-mm serve``: the search service, its request batcher and the FastAPI app."""
