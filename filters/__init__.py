"""Built-in filters (verification, dedup, scoring, thresholds); importing registers them."""

from filters import decontam, dedup, quality, verify  # noqa: F401
