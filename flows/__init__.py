"""Prefect flows: they only wire synthflow stages into tasks over batches."""
