"""Scoring retrieval: evaluate over BEIR task folders, the metrics, and reports / galleries for people."""
