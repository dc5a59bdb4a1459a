"""Beyond one process: the local / Ray embedding engine and the embedding shards it writes."""
