"""What crosses the sandbox's boundaries: plain data (None, bool, int, float, str, bytes, complex,
and lists, tuples, sets, frozensets and dicts of them, by exact type; a subclass or any other object
is refused), with depth and size limits, encoded as JSON with tags for what JSON lacks, in frames of
a 4-byte big-endian length and the JSON. Standard library only; the encoder's helpers are taken at
import, before any program runs."""

import _json
import os
import struct
import sys

MAX_DEPTH = 32
MAX_ITEMS = 100_000
MAX_CHARS = 4 << 20
MAX_FRAME = 8 << 20
_esc = _json.encode_basestring_ascii  # taken at import, before any program runs
_float_repr = float.__repr__
_int_repr = int.__repr__


def dump_json(x):
    """JSON text of plain values (what ``encode`` returns, and frames of them). A small encoder on the
    C string escaper, so the sandbox's clean parents need not import the json package."""
    t = type(x)
    if x is None:
        return "null"
    if t is bool:
        return "true" if x else "false"
    if t is int:
        return _int_repr(x)
    if t is float:
        return _float_repr(x)  # finite: encode() tags the rest
    if t is str:
        return _esc(x)
    if t is list or t is tuple:
        return "[" + ",".join([dump_json(v) for v in x]) + "]"
    if t is dict:
        return "{" + ",".join([_esc(str(k)) + ":" + dump_json(v) for k, v in x.items()]) + "}"
    raise NotPlain(f"cannot write a {t.__name__}")


class NotPlain(Exception):
    pass


class _Budget:
    def __init__(self):
        self.items = MAX_ITEMS
        self.chars = MAX_CHARS


def encode(x, budget=None, depth=0):
    """Plain data as JSON-able values; exact types only, so no program-defined method runs."""
    if budget is None:
        budget = _Budget()
    budget.items -= 1
    if budget.items < 0:
        raise NotPlain(f"more than {MAX_ITEMS} items")
    t = type(x)
    if x is None or t is bool:
        return x
    if t is int:
        if -(2**53) < x < 2**53:
            return x
        try:
            return {"$int": str(x)}
        except ValueError:  # more digits than Python converts
            raise NotPlain("an int too large to report") from None
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"$float": repr(x)}
    if t is str:
        budget.chars -= len(x)
        if budget.chars < 0:
            raise NotPlain(f"more than {MAX_CHARS} characters")
        return x
    if t is bytes:
        budget.chars -= 2 * len(x)
        if budget.chars < 0:
            raise NotPlain(f"more than {MAX_CHARS} characters")
        return {"$bytes": x.hex()}
    if t is complex:
        return {"$complex": [encode(x.real, budget, depth + 1), encode(x.imag, budget, depth + 1)]}
    if depth >= MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    if t is list:
        return [encode(v, budget, depth + 1) for v in x]
    if t is tuple:
        return {"$tuple": [encode(v, budget, depth + 1) for v in x]}
    if t is set or t is frozenset:
        return {"$" + t.__name__: [encode(v, budget, depth + 1) for v in x]}
    if t is dict:
        return {"$dict": [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in x.items()]}
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
    if fractions is not None and t is fractions.Fraction:  # exact type: its own properties run
        return {
            "$fraction": [encode(x.numerator, budget, depth + 1), encode(x.denominator, budget, depth + 1)]
        }
    if decimal is not None and t is decimal.Decimal:
        return {"$decimal": x.__str__()}
    raise NotPlain(f"a {t.__module__}.{t.__qualname__} is not plain data")


def decode(x, depth=0):
    """The inverse of ``encode`` (on the trusted side too: it builds only plain values)."""
    if depth > MAX_DEPTH + 2:
        raise NotPlain("nested too deep")
    if isinstance(x, list):
        return [decode(v, depth + 1) for v in x]
    if not isinstance(x, dict):
        return x
    if len(x) != 1:
        raise NotPlain("a malformed value")
    ((tag, v),) = x.items()
    if tag == "$int":
        return int(v)
    if tag == "$float":
        return float(v)
    if tag == "$bytes":
        return bytes.fromhex(v)
    if tag == "$complex":
        return complex(decode(v[0], depth + 1), decode(v[1], depth + 1))
    if tag == "$tuple":
        return tuple(decode(i, depth + 1) for i in v)
    if tag == "$set":
        return {decode(i, depth + 1) for i in v}
    if tag == "$frozenset":
        return frozenset(decode(i, depth + 1) for i in v)
    if tag == "$dict":
        return {decode(k, depth + 1): decode(val, depth + 1) for k, val in v}
    if tag == "$fraction":
        from fractions import Fraction

        num, den = decode(v[0], depth + 1), decode(v[1], depth + 1)
        if type(num) is not int or type(den) is not int:
            raise NotPlain("a malformed fraction")
        return Fraction(num, den)
    if tag == "$decimal":
        from decimal import Decimal

        if type(v) is not str or len(v) > 1000:
            raise NotPlain("a malformed decimal")
        return Decimal(v)
    raise NotPlain(f"an unknown tag {tag!r}")


# ---- frames: 4-byte big-endian length + JSON ------------------------------------------------------
def write_frame(fd, obj):
    data = dump_json(obj).encode()
    msg = struct.pack(">I", len(data)) + data
    while msg:
        msg = msg[os.write(fd, msg) :]


def read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(fd):
    head = read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    if n > MAX_FRAME:
        raise NotPlain(f"a frame of {n} bytes")
    body = read_exact(fd, n)
    if body is None:
        return None
    import json  # only the two sides of driver mode read frames from each other

    return json.loads(body)


class suppress:
    """contextlib.suppress without importing contextlib (a clean parent imports as little as it can)."""

    def __init__(self, *exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.exc)
