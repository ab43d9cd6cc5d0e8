"""Hamming-ranking retrieval metrics and indexes."""
