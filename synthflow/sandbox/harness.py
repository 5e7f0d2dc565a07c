"""Runs untrusted code inside an already isolated child process. It computes values; it never
decides a verdict.

This module imports only the standard library: it is also sent as source text to a bare
``python -I -S`` interpreter (the benchmark baseline). Its entry points never return: they write
their frame and end the process with ``os._exit``.

- ``run_calls`` (call mode): run the program, then evaluate each call expression (``solution()``,
  ``add(2, 3)``) and report the values as plain data. The expected values are never sent here, so a
  program that forges its own frame can only claim values, not a pass.
- ``serve_calls`` (driver mode, the program's side): run the program, then answer call requests
  from the driver process, one frame per call.
- ``run_driver`` (driver mode, the tests' side): a separate process that never loads the program:
  it runs the test code with the program's functions replaced by proxies that ask ``serve_calls``
  over a pipe, and reports pass or fail.

Plain data crosses every boundary: None, bool, int, float, str, bytes, complex, and lists, tuples,
sets, frozensets and dicts of them, by exact type (a subclass, or any other object, is refused),
with depth and size limits, encoded as JSON with tags for what JSON lacks.
"""

import builtins
import json
import os
import signal
import struct
import sys

OUTPUT_NOTE_LIMIT = 300
MAX_DEPTH = 32
MAX_ITEMS = 100_000
MAX_CHARS = 4 << 20
MAX_FRAME = 8 << 20
_dumps = json.dumps  # taken at import, before any program runs
_loads = json.loads


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
    raise NotPlain(f"an unknown tag {tag!r}")


# ---- frames: 4-byte big-endian length + JSON ------------------------------------------------------
def write_frame(fd, obj):
    data = _dumps(obj).encode()
    msg = struct.pack(">I", len(data)) + data
    while msg:
        msg = msg[os.write(fd, msg) :]


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    if n > MAX_FRAME:
        raise NotPlain(f"a frame of {n} bytes")
    body = _read_exact(fd, n)
    return None if body is None else _loads(body)


def _short(e):
    try:
        return str(e)[:OUTPUT_NOTE_LIMIT]
    except BaseException:  # noqa: BLE001 - a program's exception may refuse to print
        return "<unprintable>"


def _name(e):
    t = type(e)
    return t.__name__[:100] if isinstance(t.__name__, str) else "Exception"


class _CallTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _CallTimeout()


def _program(job):
    """Run the program; its names (not its shadows of builtins) and an error, if any."""
    saved = dict(builtins.__dict__)
    g = {"__name__": "__main__", "__builtins__": builtins}
    err = None
    try:
        exec(compile(job["code"], "<program>", "exec"), g)
    except SystemExit as e:
        err = ["SystemExit", f"exit({e.code!r}) while running the program"]
    except BaseException as e:  # noqa: BLE001 - everything the program raises is reported
        err = [_name(e), _short(e)]
    builtins.__dict__.clear()
    builtins.__dict__.update(saved)
    names = {k: v for k, v in g.items() if k not in saved and not k.startswith("__")}
    ep = job.get("entry_point")
    if ep and ep in names:
        names["candidate"] = names[ep]
    return names, saved, err


def _value(fn, saved, timeout_s):
    """(('ok', plain), ...) or ('exc', type, message) for one evaluation, with its own timeout."""
    try:
        if timeout_s:
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        v = fn()
        signal.setitimer(signal.ITIMER_REAL, 0)
        builtins.__dict__.clear()
        builtins.__dict__.update(saved)
        return {"ok": encode(v)}
    except _CallTimeout:
        return {"exc": "Timeout", "msg": f"call took longer than {timeout_s} s"}
    except NotPlain as e:
        return {"exc": "NotPlainData", "msg": _short(e)}
    except RecursionError:
        return {"exc": "RecursionError", "msg": "maximum recursion depth exceeded"}
    except BaseException as e:  # noqa: BLE001
        return {"exc": _name(e), "msg": _short(e)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        builtins.__dict__.clear()
        builtins.__dict__.update(saved)


def _flush():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def run_calls(job, result_fd):
    """Call mode: run the program, evaluate each call, report the values."""
    nonce = job["nonce"]
    calls = list(job.get("calls") or [])
    per = float(job.get("per_call_timeout_s") or 0)
    names, saved, err = _program(job)
    results = []
    if err is None:
        for src in calls:
            try:
                code = compile(src, "<call>", "eval")
            except SyntaxError as e:
                results.append({"exc": "SyntaxError", "msg": _short(e)})
                continue
            results.append(_value(lambda c=code: eval(c, dict(names, __builtins__=builtins)), saved, per))
    _flush()
    try:
        write_frame(result_fd, {"nonce": nonce, "program_error": err, "results": results})
    finally:
        os._exit(0)


def serve_calls(job, req_fd, resp_fd):
    """Driver mode, the program's side: answer the driver's calls until it hangs up."""
    names, saved, err = _program(job)
    nonce = job["nonce"]
    while True:
        try:
            req = read_frame(req_fd)
        except BaseException:  # noqa: BLE001
            req = None
        if req is None:
            _flush()
            os._exit(0)
        if err is not None:
            out = {"exc": "ProgramError", "msg": f"{err[0]}: {err[1]}"}
        else:
            fn = names.get(req.get("fn"))
            if not callable(fn):
                out = {"exc": "NameError", "msg": f"the program defines no function {req.get('fn')!r}"}
            else:
                try:
                    args = decode(req["args"])
                    kwargs = decode(req.get("kwargs") or {"$dict": []})
                except BaseException as e:  # noqa: BLE001
                    out = {"exc": "BadRequest", "msg": _short(e)}
                else:
                    out = _value(lambda f=fn, a=args, k=kwargs: f(*a, **k), saved, 0)
        out["nonce"] = nonce
        write_frame(resp_fd, out)


class RemoteError(Exception):
    """The program raised (or failed to answer) in a call the tests made."""


def run_driver(job, req_fd, resp_fd, result_fd):
    """Driver mode, the tests' side: the program's functions are proxies; this process decides."""
    nonce = job["nonce"]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a program that exits early is an error, not a kill

    def proxy(name):
        def call(*args, **kwargs):
            try:
                write_frame(req_fd, {"fn": name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))})
                resp = read_frame(resp_fd)
            except (OSError, ValueError, NotPlain):
                resp = None
            if not isinstance(resp, dict) or resp.get("nonce") != nonce:
                raise RemoteError("the program's process did not answer")
            if "exc" in resp:
                raise RemoteError(f"{resp['exc']}: {resp.get('msg', '')}")
            if "ok" not in resp:
                raise RemoteError("the program's process answered without a value")
            try:
                return decode(resp["ok"])
            except (NotPlain, ValueError, TypeError, RecursionError) as e:
                raise RemoteError(f"NotPlainData: {e}") from None

        call.__name__ = name
        return call

    status, exc_type, message = "pass", "", ""
    g = {"__name__": "__tests__", "__builtins__": builtins}
    try:
        if job.get("prompt"):  # the benchmark's own code (helpers such as HumanEval's poly)
            exec(compile(job["prompt"], "<prompt>", "exec"), g)
        for name in job.get("program_names") or []:
            g[name] = proxy(name)
        exec(compile(job["tests"], "<tests>", "exec"), g)
        ep = job.get("entry_point")
        if ep and callable(g.get("check")):
            g["check"](proxy(ep))
    except AssertionError as e:
        status, exc_type, message = "fail", "AssertionError", _short(e) or "an assertion failed"
    except RemoteError as e:
        status, exc_type, message = "error", "ProgramError", _short(e)
    except BaseException as e:  # noqa: BLE001
        status, exc_type, message = "error", _name(e), _short(e)
    _flush()
    try:
        write_frame(result_fd, {"nonce": nonce, "status": status, "exc_type": exc_type, "message": message})
    finally:
        os._exit(0)


def main_from_argv():
    """Entry for ``python -I -S -c <this source>`` (the baseline): argv = [job_file, result_fd]."""
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    run_calls(job, int(sys.argv[2]))
