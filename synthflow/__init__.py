"""synthflow: verified, deduplicated, scored synthetic SFT data."""

__version__ = "0.1.0"
