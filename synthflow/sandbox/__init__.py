"""Executing untrusted programs: jobs in, verdicts out."""

from synthflow.sandbox.verdict import STATUSES, Job, Verdict

__all__ = ["STATUSES", "Job", "Verdict"]
