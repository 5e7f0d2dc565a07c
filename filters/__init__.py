"""Built-in filters and scorers (verification, dedup, scoring, selection, thresholds); importing
registers them."""

from filters import clf, decontam, dedup, ifd, judge, quality, select, sft, verify  # noqa: F401
