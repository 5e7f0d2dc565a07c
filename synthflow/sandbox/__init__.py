"""Executing untrusted programs: jobs in, verdicts out.

The package itself imports nothing: the sandbox server loads ``harness`` and ``server`` from here
without dataclasses or anything else a clean parent does not need (its children fork and exit faster
the smaller it is). ``Job``, ``Verdict`` and ``STATUSES`` load on first use."""

__all__ = ["STATUSES", "Job", "Verdict"]


def __getattr__(name: str):
    if name in __all__:
        from synthflow.sandbox import verdict

        return getattr(verdict, name)
    raise AttributeError(f"module 'synthflow.sandbox' has no attribute {name!r}")
