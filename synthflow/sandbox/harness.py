"""Runs untrusted code inside an already isolated child process. It computes values; it never
decides a verdict.

This module imports only the standard library (the sandbox server imports it). ``prepare``
compiles a job's code before the child's guard is installed; the entry points never return: they
write their frame and end the process with ``os._exit``.

- ``run_calls`` (call mode): run the program, then evaluate each call expression (``solution()``,
  ``add(2, 3)``) and report the values as plain data. The expected values are never sent here, so a
  program that forges its own frame can only claim values, not a pass.
- ``serve_calls`` (driver mode, the program's side): run the program, then answer call requests
  from the driver process, one frame per call.
- In both, every function under test (``entry_points``) must be the object its ``def`` made, after
  the program ran and after every call; otherwise the program error is ``ReboundEntryPoint``. A
  program that leaves a thread running is an error too.
- ``run_driver`` (driver mode, the tests' side): a separate process that never loads the program:
  it runs the test code with the program's functions replaced by proxies that ask ``serve_calls``
  over a pipe, and reports pass or fail.

Plain data crosses every boundary (``synthflow.sandbox.wire``).
"""

import _signal as signal
import _thread
import builtins
import math as _math
import os
import sys
from _functools import _lru_cache_wrapper as _LruWrapper

from synthflow.sandbox.wire import (
    NotPlain,
    decode,
    encode,
    read_frame,
    write_frame,
)

OUTPUT_NOTE_LIMIT = 300
_CodeType = type(compile("0", "<type>", "eval"))
_FunctionType = type(lambda: 0)


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


def prepare(job):
    """Compile what this side of the job runs, before the guard is installed (so every ``compile``
    the guard sees afterwards is the program's own). Returns the job with code objects added."""
    ready = dict(job)
    if "code" in job:
        try:
            ready["_code"] = compile(job["code"], "<program>", "exec")
        except BaseException as e:  # noqa: BLE001 - a syntax error, or source too deep to compile
            ready["_code_err"] = [_name(e), _short(e)]
        calls = []
        for src in job.get("calls") or []:
            try:
                calls.append(compile(src, "<call>", "eval"))
            except BaseException as e:  # noqa: BLE001
                calls.append((_name(e), _short(e)))
        ready["_calls"] = calls
    if "tests" in job:
        try:
            import ast

            tree = _count_asserts(ast.parse(job["tests"]))
            ready["_tests"] = compile(ast.fix_missing_locations(tree), "<tests>", "exec")
        except BaseException as e:  # noqa: BLE001
            ready["_tests_err"] = [_name(e), _short(e)]
        try:
            ready["_prompt"] = compile(job.get("prompt") or "", "<prompt>", "exec")
        except BaseException as e:  # noqa: BLE001
            ready["_tests_err"] = [_name(e), _short(e)]
    return ready


def _count_asserts(tree):
    """Each ``assert`` is preceded by a call that counts it: a test run that executed none fails."""
    import ast

    class Count(ast.NodeTransformer):
        def visit_Assert(self, node):
            count = ast.Expr(ast.Call(ast.Name("__synthflow_assert__", ast.Load()), [], []))
            return [ast.copy_location(count, node), node]

    return Count().visit(tree)


def _defs(code, name):
    """The code objects of the module's own ``def name`` statements."""
    return [c for c in code.co_consts if isinstance(c, _CodeType) and c.co_name == name]


def _entry_problem(job, g):
    """'' when every function under test is the one its ``def`` made, else why not. A program that
    rebinds it (a second def, an assignment, a decorator, through gc, a frame or a thread) shows one
    function in the published code and answers with another."""
    code = job.get("_code")
    if code is None:
        return ""
    for ep in job.get("entry_points") or ():
        if ep not in g:
            continue  # a NameError when the tests call it
        obj = g[ep]
        defs = _defs(code, ep)
        target = obj.__wrapped__ if type(obj) is _LruWrapper else obj
        if len(defs) != 1 or type(target) is not _FunctionType or target.__code__ is not defs[0]:
            return f"{ep} is not the function its def defines"
    return ""


def _program(job):
    """Run the program; its names, the saved builtins, an error if any, and its globals."""
    saved = dict(builtins.__dict__)
    # not "__main__": a demo block under ``if __name__ == "__main__":`` (reading stdin, printing)
    # is not part of what the tests check
    g = {"__name__": "__program__", "__builtins__": builtins}
    err = job.get("_code_err")
    if err is None:
        try:
            exec(job["_code"], g)
        except SystemExit as e:
            err = ["SystemExit", f"exit({e.code!r}) while running the program"]
        except BaseException as e:  # noqa: BLE001 - everything the program raises is reported
            err = [_name(e), _short(e)]
    builtins.__dict__.clear()
    builtins.__dict__.update(saved)
    # the program's names, its shadows of builtins too (the policy allows those only for functions
    # under test: ``def abs`` tested as ``abs(-3)`` must run the program's abs, not the builtin)
    names = {k: v for k, v in g.items() if not k.startswith("__")}
    names.pop("candidate", None)  # the tests' name for the entry point, never the program's own
    if err is None and job.get("policy") == "verify":
        why = _entry_problem(job, g)
        if why:
            err = ["ReboundEntryPoint", why]
        elif _thread._count():
            err = ["ThreadLeftRunning", "the program left a thread running after it finished"]
    ep = job.get("entry_point")
    if ep and ep in names:
        names["candidate"] = names[ep]
    return names, saved, err, g


def _rebound_since(job, g, names):
    if job.get("policy") != "verify":
        return None
    for ep in job.get("entry_points") or ():
        if ep in names and g.get(ep) is not names[ep]:
            return ["ReboundEntryPoint", f"{ep} was rebound while the tests ran"]
    return None


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
    per = float(job.get("per_call_timeout_s") or 0)
    names, saved, err, g = _program(job)
    results = []
    if err is None:
        fns = job.get("call_fns") or []
        for i, code in enumerate(job.get("_calls") or []):
            if isinstance(code, tuple):
                results.append({"exc": code[0], "msg": code[1]})
                continue
            # the call sees the function it calls and nothing else of the program: its arguments
            # are clean expressions (builtins, math), which a program's shadows must not change
            ns = {"__builtins__": builtins, "math": _math}
            fn = fns[i] if i < len(fns) else None
            if fn in names:
                ns[fn] = names[fn]
            results.append(_value(lambda c=code, ns=ns: eval(c, ns), saved, per))
        err = _rebound_since(job, g, names)
    _flush()
    try:
        write_frame(result_fd, {"nonce": nonce, "program_error": err, "results": results})
    finally:
        os._exit(0)


def serve_calls(job, req_fd, resp_fd):
    """Driver mode, the program's side: answer the driver's calls until it hangs up."""
    names, saved, err, g = _program(job)
    nonce = job["nonce"]
    while True:
        try:
            req = read_frame(req_fd)
        except BaseException:  # noqa: BLE001
            req = None
        if not isinstance(req, dict):
            _flush()
            os._exit(0)
        if err is None:
            err = _rebound_since(job, g, names)
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
    """Driver mode, the tests' side: the program's functions are proxies; this process decides. It
    never sees the program. A run that called no program function or executed no ``assert`` is a
    fail (``NoTestRan``): tests under a ``__main__`` guard, in ``def test_*`` functions nobody calls,
    or in a ``unittest`` class check nothing."""
    nonce = job["nonce"]
    peer = job.get("peer_nonce")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a program that exits early is an error, not a kill
    counts = {"calls": 0, "asserts": 0}

    def counted():
        counts["asserts"] += 1

    def proxy(name):
        def call(*args, **kwargs):
            counts["calls"] += 1
            try:
                write_frame(req_fd, {"fn": name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))})
                resp = read_frame(resp_fd)
            except (OSError, ValueError, NotPlain):
                resp = None
            if not isinstance(resp, dict) or resp.get("nonce") != peer:
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
    g = {"__name__": "__tests__", "__builtins__": builtins, "__synthflow_assert__": counted}
    try:
        if job.get("_tests_err"):
            raise SyntaxError(": ".join(job["_tests_err"]))
        exec(job["_prompt"], g)  # the benchmark's own code (helpers such as HumanEval's poly)
        for name in job.get("program_names") or []:
            g[name] = proxy(name)
        exec(job["_tests"], g)
        ep = job.get("entry_point")
        if ep and callable(g.get("check")):
            g["check"](proxy(ep))
    except AssertionError as e:
        status, exc_type, message = "fail", "AssertionError", _short(e) or "an assertion failed"
    except RemoteError as e:
        status, exc_type, message = "error", "ProgramError", _short(e)
    except BaseException as e:  # noqa: BLE001
        status, exc_type, message = "error", _name(e), _short(e)
    if status == "pass" and (not counts["calls"] or not counts["asserts"]):
        status, exc_type = "fail", "NoTestRan"
        message = (
            f"the tests made {counts['calls']} call(s) to the program and ran {counts['asserts']} assert(s); "
            "a test must call the program and assert on the result"
        )
    _flush()
    try:
        write_frame(result_fd, {"nonce": nonce, "status": status, "exc_type": exc_type, "message": message})
    finally:
        os._exit(0)
