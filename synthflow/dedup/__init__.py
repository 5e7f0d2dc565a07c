"""Dedup and decontamination: vectorized MinHash, LSH index, n-gram benchmark overlap."""
