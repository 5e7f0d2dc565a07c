"""Runs one untrusted program inside an already isolated child process.

This module imports only the standard library: it is also sent as source text to a bare
``python -I -S`` interpreter. ``run_job`` never returns: it writes one JSON line to ``result_fd``
and ends the process with ``os._exit``.

Job fields: ``code`` (required); ``tests`` (asserts, or a ``check(candidate)`` function);
``entry_point`` (the function ``check`` receives); ``call`` (an expression whose value is reported,
e.g. ``solution()``).
"""

import builtins
import json
import os
import signal
import sys

OUTPUT_NOTE_LIMIT = 300


def _jsonable(x, depth=0):
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else repr(x)
    if depth < 4 and isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in x[:1000]]
    if depth < 4 and isinstance(x, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(x.items())[:1000]}
    return repr(x)[:2000]


class _TestTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _TestTimeout()


def _run_test_list(tests, t, per_test_s):
    """Run each test separately (CodeT): a list of pass/fail, one per test."""
    results = []
    for src in tests:
        ok = False
        try:
            signal.signal(signal.SIGALRM, _alarm)
            if per_test_s:
                signal.setitimer(signal.ITIMER_REAL, per_test_s)
            exec(compile(src, "<test>", "exec"), dict(t))
            ok = True
        except _TestTimeout:
            ok = False
        except BaseException:  # noqa: BLE001 - any failure of one test is that test failing
            ok = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        results.append(ok)
    return results


def _short(e):
    msg = str(e)
    return msg[:OUTPUT_NOTE_LIMIT]


def run_job(job, result_fd):
    saved = dict(builtins.__dict__)
    status, exc_type, message, value, value_repr, phase = "pass", "", "", None, "", "code"
    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(job["code"], "<program>", "exec"), g)
        # Undo any monkeypatching of builtins before the tests judge the program.
        builtins.__dict__.clear()
        builtins.__dict__.update(saved)
        tests = job.get("tests")
        call = job.get("call")
        test_list = job.get("test_list")
        if tests or call or test_list:
            # Tests see the program's names, but never its shadows of builtins.
            t = {k: v for k, v in g.items() if k not in saved and not k.startswith("__")}
            t["__name__"] = "__tests__"
            t["__builtins__"] = builtins
            if tests:
                phase = "tests"
                exec(compile(tests, "<tests>", "exec"), t)
                ep = job.get("entry_point")
                if ep and "check" in t and callable(t["check"]):
                    if ep not in t:
                        raise NameError(f"entry point {ep!r} is not defined")
                    t["check"](t[ep])
            if test_list:
                phase = "test_list"
                res = _run_test_list(test_list, t, float(job.get("per_test_timeout_s") or 0))
                value, value_repr = res, repr(res)
            if call:
                phase = "call"
                v = eval(compile(call, "<call>", "eval"), t)
                value, value_repr = _jsonable(v), repr(v)[:2000]
        phase = "done"
    except AssertionError as e:
        status, exc_type, message = "fail", "AssertionError", _short(e) or f"assertion failed in {phase}"
    except MemoryError:
        status, exc_type, message = "memory", "MemoryError", f"out of memory in {phase}"
    except SystemExit as e:
        status, exc_type, message = "error", "SystemExit", f"exit({e.code!r}) during {phase}"
    except KeyboardInterrupt:
        status, exc_type, message = "error", "KeyboardInterrupt", f"interrupted during {phase}"
    except BaseException as e:  # noqa: BLE001 - everything the program raises is a verdict
        status, exc_type, message = "error", type(e).__name__, _short(e)
    finally:
        builtins.__dict__.clear()
        builtins.__dict__.update(saved)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    line = json.dumps(
        {
            "status": status,
            "exc_type": exc_type,
            "message": message,
            "phase": phase,
            "value": value,
            "value_repr": value_repr,
        }
    )
    try:
        os.write(result_fd, (line + "\n").encode())
    finally:
        os._exit(0)


def main_from_argv():
    """Entry for ``python -I -S -c <this source>``: argv = [job_file, result_fd]."""
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    run_job(job, int(sys.argv[2]))
