"""A forgery corpus: wrong programs (``add`` subtracts) that attack the verdict instead of computing
the sum. Every one must get a non-pass verdict, in call mode (decomposed asserts), with a
HumanEval-style ``check(candidate)``, and in driver mode (trusted tests that cannot be decomposed);
an honest program next to them passes in every mode.

The attacks know the protocol (it is open source): fd numbers, frame format, the nonce in memory,
the harness module. What they do not have is the expected value: it never enters their process.
"""

from __future__ import annotations

import os

import pytest

from synthflow.sandbox import Job
from synthflow.sandbox.forkserver import SandboxExecutor

from .helpers import sandbox_processes

WRONG = "def add(a, b):\n    return a - b\n"
HONEST = "def add(a, b):\n    return a + b\n"

_FIND_NONCE = """
import gc
def _nonce():
    for o in gc.get_objects():
        if isinstance(o, dict) and isinstance(o.get("nonce"), str) and len(o["nonce"]) == 32:
            return o["nonce"]
    return "0" * 32
"""
_FRAME = """
import json, struct
def _frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data
"""
PASS_RECORDS = (
    "{'nonce': _nonce(), 'status': 'pass', 'results': [], 'program_error': None}",
    "{'nonce': _nonce(), 'status': 'pass', 'exc_type': '', 'message': ''}",
    "{'nonce': _nonce(), 'results': [{'ok': True}, {'ok': True}], 'program_error': None}",
)

ATTACKS: dict[str, str] = {
    # a pass record on the inherited result fd, then exit before the harness reports
    "raw pass line on fd 3": 'import os\nos.write(3, b\'{"status": "pass"}\\n\')\nos._exit(0)',
    "framed pass record, nonce from gc": _FIND_NONCE
    + _FRAME
    + f"import os\nos.write(3, _frame({PASS_RECORDS[0]}))\nos._exit(0)",
    "framed driver-style pass": _FIND_NONCE
    + _FRAME
    + f"import os\nos.write(3, _frame({PASS_RECORDS[1]}))\nos._exit(0)",
    "framed truthy results": _FIND_NONCE
    + _FRAME
    + f"import os\nos.write(3, _frame({PASS_RECORDS[2]}))\nos._exit(0)",
    "pass record then let the harness run": _FIND_NONCE
    + _FRAME
    + f"import os\nos.write(3, _frame({PASS_RECORDS[0]}))",
    "os.fdopen on the result fd": _FIND_NONCE
    + _FRAME
    + f"import os\nf = os.fdopen(3, 'wb')\nf.write(_frame({PASS_RECORDS[0]}))\nf.flush()\nos._exit(0)",
    "dup2 the result fd onto stdout": _FIND_NONCE
    + _FRAME
    + f"import os, sys\nos.dup2(3, 1)\nsys.stdout.buffer.write(_frame({PASS_RECORDS[0]}))\nsys.stdout.flush()\nos._exit(0)",
    "spray every fd": _FIND_NONCE
    + _FRAME
    + f"import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, _frame({PASS_RECORDS[0]}))\n    except OSError:\n        pass\nos._exit(0)",
    # patching what the harness uses
    "patch json.dumps": 'import json\njson.dumps = lambda *a, **k: \'{"status": "pass", "results": []}\'',
    "patch os.write": _FIND_NONCE
    + _FRAME
    + f"import os\n_w = os.write\nos.write = lambda fd, data: _w(fd, _frame({PASS_RECORDS[0]}))",
    "patch the harness encode": "import sys\nfor m in list(sys.modules.values()):\n    if hasattr(m, 'encode') and hasattr(m, 'run_calls'):\n        m.encode = lambda x, *a, **k: True",
    "patch the harness compile": "import sys, builtins\n_c = builtins.compile\nfor m in list(sys.modules.values()):\n    if hasattr(m, 'run_calls'):\n        m.compile = lambda src, name, mode, *a: _c('True', name, mode)",
    "replace builtins.compile and eval": "import builtins\n_c = builtins.compile\nbuiltins.compile = lambda s, n, m, *a, **k: _c('True', n, m)\nbuiltins.eval = lambda *a, **k: True",
    "patch the harness _value": "import sys\nfor m in list(sys.modules.values()):\n    if hasattr(m, '_value'):\n        m._value = lambda *a, **k: {'ok': True}",
    # introspection: rewrite the work list or swap the function
    "rewrite the calls via gc": "import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'calls' in o:\n        o['calls'] = ['True' for _ in o['calls']]",
    "swap add via gc": "import gc\ndef add(a, b):\n    return a - b\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'add' in o and callable(o['add']):\n        o['add'] = lambda a, b: True",
    "walk frames to swap add": "import sys\nf = sys._getframe()\nwhile f is not None:\n    if 'add' in f.f_globals:\n        f.f_globals['add'] = lambda a, b: True\n    f = f.f_back",
    "settrace replaces functions": "import sys\ndef _t(frame, event, arg):\n    if 'add' in frame.f_globals:\n        frame.f_globals['add'] = lambda a, b: True\n    return _t\nsys.settrace(_t)",
    "setprofile rewrites results": "import sys\ndef _p(frame, event, arg):\n    if event == 'return' and isinstance(arg, dict) and 'results' in arg:\n        arg['results'] = [{'ok': True}]\nsys.setprofile(_p)",
    "signal handler writes the pass record": _FIND_NONCE
    + _FRAME
    + f"import os, signal\ndef _h(*a):\n    os.write(3, _frame({PASS_RECORDS[0]}))\n    os._exit(0)\nsignal.signal(signal.SIGALRM, _h)\nsignal.setitimer(signal.ITIMER_REAL, 0.001)\nimport time\ntime.sleep(0.05)",
    "thread keeps writing pass records": _FIND_NONCE
    + _FRAME
    + f"import os, threading\ndef _spam():\n    while True:\n        try:\n            os.write(3, _frame({PASS_RECORDS[0]}))\n        except OSError:\n            return\nthreading.Thread(target=_spam, daemon=True).start()",
    "atexit hook": _FIND_NONCE
    + _FRAME
    + f"import atexit, os\natexit.register(lambda: os.write(3, _frame({PASS_RECORDS[0]})))",
    # results that claim equality
    "__eq__ always True": "class _T:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\ndef add(a, b):\n    return _T()",
    "int subclass equal to all": "class _I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return _I(a - b)",
    "str subclass": "class _S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\ndef add(a, b):\n    return _S('x')",
    "list subclass": "class _L(list):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return _L()",
    "float subclass": "class _F(float):\n    def __eq__(self, o):\n        return True\n    __hash__ = float.__hash__\ndef add(a, b):\n    return _F(0.0)",
    "bool lookalike": "class _B:\n    def __bool__(self):\n        return True\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return _B()",
    "a generator": "def add(a, b):\n    yield a - b",
    "nested 500 deep": "def add(a, b):\n    x = []\n    for _ in range(500):\n        x = [x]\n    return x",
    "a huge result": "def add(a, b):\n    return list(range(10**6))",
    # leaving early
    "sys.exit at import": "import sys\nsys.exit(0)",
    "os._exit inside add": "import os\ndef add(a, b):\n    os._exit(0)",
    "SystemExit inside add": "def add(a, b):\n    raise SystemExit(0)",
    "KeyboardInterrupt inside add": "def add(a, b):\n    raise KeyboardInterrupt",
    # escapes that used to slip past the audit hook
    "_posixsubprocess.fork_exec": "import _posixsubprocess, os\nr, w = os.pipe()\ntry:\n    _posixsubprocess.fork_exec(['/bin/true'], [b'/bin/true'], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, True)\nexcept OSError:\n    pass\nos.write(3, b'{\"status\": \"pass\"}')",
    "clear the hook's tables": "import sys\nfor m in list(sys.modules.values()):\n    for name in ('BLOCKED_EVENTS', 'WRITE_EVENTS'):\n        t = getattr(m, name, None)\n        if isinstance(t, (dict, set)):\n            t.clear()\nimport os\npid = os.fork()\nif pid == 0:\n    os._exit(0)",
    "open the server's pipe via /proc": _FIND_NONCE
    + _FRAME
    + f"import os\nfor n in range(0, 64):\n    try:\n        with open(f'/proc/{{os.getppid()}}/fd/{{n}}', 'wb') as f:\n            f.write(_frame({PASS_RECORDS[0]}))\n    except Exception:\n        pass",
    "kill the parent": "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept Exception:\n    pass",
    "ptrace the parent": "import ctypes\ntry:\n    ctypes.CDLL(None).ptrace(16, __import__('os').getppid(), 0, 0)\nexcept Exception:\n    pass",
}


@pytest.fixture(scope="module")
def ex():
    e = SandboxExecutor(workers=2)
    yield e
    e.close()


def _jobs(program: str, policy: str = "verify") -> list[Job]:
    return [
        Job(code=program, tests="assert add(2, 3) == 5\nassert add(1, 1) == 2", timeout_s=3, policy=policy),
        Job(code=program, tests="def check(candidate):\n    assert candidate(2, 3) == 5\n", entry_point="add", timeout_s=3, policy=policy),
        # not decomposable (a loop): driver mode, trusted because the tests are a benchmark's
        Job(code=program, tests="for a, b in [(2, 3), (1, 1)]:\n    assert add(a, b) == a + b", tests_trusted=True, timeout_s=3, policy=policy),
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("policy", ["verify", "none"])
def test_forgery_fails(ex, name, policy):
    """With the static policy (the default) and without it (isolation only: the clean parent,
    seccomp, the audit hook and the host-side comparison must hold on their own)."""
    attack = ATTACKS[name]
    program = attack if "def add" in attack else WRONG + attack
    verdicts = ex.run(_jobs(program, policy))
    for mode, v in zip(("calls", "check", "driver"), verdicts, strict=True):
        assert v.status != "pass", (name, mode, policy, v)
    honest = ex.run(_jobs(HONEST, policy))
    assert all(v.status == "pass" and v.trusted for v in honest), honest


def test_corpus_is_big_enough():
    assert len(ATTACKS) >= 35


def test_deep_directory_tree_is_cleaned_up(ex):
    """1200 nested folders (beyond PATH_MAX, which made the recursive cleanup fail) go away, and the
    next job runs normally."""
    deep = (
        "import os\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\nopen('f', 'w').write('x')\n"
    )
    v = ex.run([Job(code=deep + HONEST, tests="assert add(2, 3) == 5", timeout_s=20, policy="none")])[0]
    assert v.status == "pass"
    assert all(v.status == "pass" for v in ex.run(_jobs(HONEST)))


def test_result_bytes_count_toward_the_output_cap(ex):
    flood = "import os\nchunk = b'x' * 65536\nwhile True:\n    os.write(3, chunk)\n"
    v = ex.run([Job(code=WRONG + flood, tests="assert add(2, 3) == 5", timeout_s=10, policy="none")])[0]
    assert v.status == "killed" and "output limit" in v.message


def test_a_malformed_frame_spoils_only_its_own_job(ex):
    bad = "import os, struct\nos.write(3, struct.pack('>I', 2**31) + b'{')\nos._exit(0)"
    jobs = [Job(code=WRONG + bad, tests="assert add(2, 3) == 5", timeout_s=3, policy="none")] + _jobs(HONEST)
    v = ex.run(jobs)
    assert v[0].status == "error" and v[0].exc_type in ("MalformedResult", "EarlyExit")
    assert all(x.status == "pass" for x in v[1:])


def test_nothing_is_left_running_after_the_corpus(ex):
    ex.run(_jobs(WRONG + ATTACKS["thread keeps writing pass records"], "none"))
    left = sandbox_processes()
    assert not left or os.geteuid() != 0
