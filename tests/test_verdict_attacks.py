"""Wrong programs that game the verdict, one class of attack per test, each beside an honest control.

Every attack here is a wrong program (``add`` subtracts; the egg problem's answer is 31 and every
attack states 30). Each must get a non-pass verdict in the default mode (static policy, clean
parent, seccomp allow-list, audit hook), and the honest program beside it must pass. Some classes
also run with ``policy="none"`` (isolation only) to show that the layer behind the policy holds too.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from filters.verify import Verify
from synthflow.record import Record
from synthflow.sandbox import Job
from synthflow.sandbox.forkserver import SandboxExecutor

from .conftest import run_cli

WRONG = "def add(a, b):\n    return a - b\n"
HONEST = "def add(a, b):\n    return a + b\n"
CALL_TESTS = "assert add(2, 3) == 5\nassert add(1, 1) == 2"
# not decomposable (a loop): driver mode; trusted because they stand for a benchmark's own tests
DRIVER_TESTS = "for a, b in [(2, 3), (1, 1)]:\n    assert add(a, b) == a + b"


@pytest.fixture(scope="module")
def ex():
    e = SandboxExecutor(workers=2)
    yield e
    e.close()


def _modes(program: str, policy: str = "verify") -> list[Job]:
    return [
        Job(code=program, tests=CALL_TESTS, timeout_s=5, policy=policy),
        Job(
            code=program,
            tests="def check(candidate):\n    assert candidate(2, 3) == 5\n",
            entry_point="add",
            timeout_s=5,
            policy=policy,
        ),  # fmt: skip
        Job(code=program, tests=DRIVER_TESTS, tests_trusted=True, timeout_s=5, policy=policy),
    ]


def _assert_none_pass(ex, program: str, policy: str = "verify") -> None:
    for mode, v in zip(("calls", "check", "driver"), ex.run(_modes(program, policy)), strict=True):
        assert v.status != "pass", (mode, policy, v)


def _assert_honest_passes(ex, policy: str = "verify") -> None:
    vs = ex.run(_modes(HONEST, policy))
    assert all(v.status == "pass" for v in vs), vs


# ---- 1. the clean parent: nothing of the job's tests, or of an earlier job, is in the program's memory ----
FIND_TESTS_IN_MEMORY = {
    # a completion that finds the tests in its process answers from them (a recorder would build a table)
    # the patterns do not match their own source (escaped parentheses), so an attack never finds itself
    "gc scan for the tests": "import gc, re\n"
    "TESTS = re.compile(r'assert add\\(\\w')\n"
    "def add(a, b):\n"
    "    for o in gc.get_objects():\n"
    "        if isinstance(o, (str, dict, list, tuple)) and TESTS.search(str(o)[:100000]):\n"
    "            return a + b\n"
    "    return a - b\n",
    "frame walk for the tests": "import sys, re\n"
    "TESTS = re.compile(r'assert add\\(\\w')\n"
    "def add(a, b):\n"
    "    f = sys._getframe()\n"
    "    while f is not None:\n"
    "        if TESTS.search(repr(f.f_locals)[:100000]) or TESTS.search(repr(f.f_globals)[:100000]):\n"
    "            return a + b\n"
    "        f = f.f_back\n"
    "    return a - b\n",
    "heap read through /proc/self/mem": "import re\n"
    "TESTS = re.compile(rb'assert add\\(\\w')\n"
    "def _heap_has():\n"
    "    with open('/proc/self/maps') as m:\n"
    "        spans = [l.split()[0].split('-') for l in m if 'rw-p' in l]\n"
    "    with open('/proc/self/mem', 'rb', 0) as mem:\n"
    "        for lo, hi in spans:\n"
    "            lo, hi = int(lo, 16), int(hi, 16)\n"
    "            if hi - lo > 64 << 20:\n"
    "                continue\n"
    "            try:\n"
    "                mem.seek(lo)\n"
    "                if TESTS.search(mem.read(hi - lo)):\n"
    "                    return True\n"
    "            except OSError:\n"
    "                pass\n"
    "    return False\n"
    "FOUND = _heap_has()\n"
    "def add(a, b):\n"
    "    return a + b if FOUND else a - b\n",
}


@pytest.mark.parametrize("name", sorted(FIND_TESTS_IN_MEMORY))
@pytest.mark.parametrize("policy", ["verify", "none"])
def test_tests_are_not_in_the_programs_memory(ex, name, policy):
    """Driver mode used to fork the program from a parent that had read the job: a completion walked
    to the tests and answered from them (a trusted pass on four HumanEval tasks). Now the program's
    process never holds the tests, with the policy (refused outright) and without it (found nothing)."""
    _assert_none_pass(ex, FIND_TESTS_IN_MEMORY[name], policy)
    _assert_honest_passes(ex, policy)


def test_an_earlier_jobs_values_are_not_in_a_later_jobs_memory(ex):
    """A CodeT candidate copied an earlier candidate's result, a self-consistency sample the main
    program's value. Job 1 computes a marker; job 2 (same warm server, isolation only) searches its
    memory for it and for job 1's code."""
    marker = "def solution():\n    return 'synthflow-marker-' + str(7 * 191)\n"
    seek = (
        "import gc, re\n"
        "EARLIER = re.compile(r'synthflow-marker-\\d|str\\(7 \\* 191\\)')\n"
        "def solution():\n"
        "    for o in gc.get_objects():\n"
        "        s = repr(o)[:100000] if isinstance(o, (str, dict, list, tuple)) else ''\n"
        "        if EARLIER.search(s):\n"
        "            return 'found'\n"
        "    return 'clean'\n"
    )
    for _ in range(2):
        v1, v2 = (
            ex.run([Job(code=marker, call="solution()", policy="none")])[0],
            ex.run([Job(code=seek, call="solution()", policy="none")])[0],
        )
        assert v1.value == "synthflow-marker-1337"
        assert v2.status == "pass" and v2.value == "clean", v2


# ---- 2. nothing outlives a job ------------------------------------------------------------------------
def test_files_left_in_shared_places_do_not_reach_the_next_job(ex):
    plant = (
        "import os\n"
        "for p in ('/tmp/synthflow-leak', '/dev/shm/synthflow-leak', '/var/tmp/synthflow-leak', '../synthflow-leak'):\n"
        "    try:\n"
        "        fd = os.open(p, os.O_WRONLY | os.O_CREAT)\n"
        "        os.write(fd, b'30')\n"
        "    except Exception:\n"
        "        pass\n"
    )
    look = (
        "import os\n"
        "def solution():\n"
        "    return [p for p in ('/tmp/synthflow-leak', '/dev/shm/synthflow-leak', '/var/tmp/synthflow-leak',\n"
        "            '../synthflow-leak') if os.path.exists(p)]\n"
    )
    ex.run([Job(code=plant, policy="none")])
    v = ex.run([Job(code=look, call="solution()", policy="none")])[0]
    assert v.status == "pass" and v.value == [], v


# ---- 3. the function under test is the one its def makes ---------------------------------------------
REBIND = {
    "second def": WRONG + "def add(a, b):\n    return a + b\n",
    "lambda after the def": WRONG + "add = lambda a, b: a + b\n",
    "decorator returns another function": "def fix(f):\n    return lambda a, b: a + b\n@fix\n" + WRONG,
    "rebound lru_cache": "from functools import lru_cache\nlru_cache = lambda *a: (lambda f: (lambda a, b: a + b))\n"
    "@lru_cache(None)\n" + WRONG,
    "global from a helper": WRONG + "def _fix():\n    global add\n    add = lambda a, b: a + b\n_fix()\n",
    "globals()": WRONG + "globals()['add'] = lambda a, b: a + b\n",
    "gc walk": WRONG + "import gc\nfor o in gc.get_objects():\n"
    "    if isinstance(o, dict) and o.get('add') is not None:\n        o['add'] = lambda a, b: a + b\n",
    "frame walk": WRONG + "import sys\nsys._getframe(0).f_globals['add'] = lambda a, b: a + b\n",
    "a thread rebinds later": WRONG
    + "import threading, time\ndef _later():\n    global add\n    time.sleep(0.01)\n"
    "    add = lambda a, b: a + b\nthreading.Thread(target=_later).start()\ntime.sleep(0.05)\n",
    "harness's saved builtins": WRONG + "import builtins\nbuiltins.add = lambda a, b: a + b\ndel add\n",
    "code swap": WRONG + "add.__code__ = (lambda a, b: a + b).__code__\n",
    "setattr on the module": WRONG
    + "import sys\nsetattr(sys.modules[__name__], 'add', lambda a, b: a + b)\n",
    "exec a new def": WRONG + "exec('def add(a, b):\\n    return a + b')\n",
    "eval of a rebinding": WRONG + "eval(\"__import__('builtins').setattr\")\n",
    "import alias": "from operator import add\n",
    "class named add": "class add:\n    def __new__(cls, a, b):\n        return a + b\n" + WRONG,
    "walrus in a comprehension": WRONG + "[(add := (lambda a, b: a + b)) for _ in range(1)]\n",
    "computed getattr": WRONG + "import random\nsetattr(getattr(random, '_o' + 's'), 'x', 1)\n",
    "format string attribute": WRONG + "s = '{0.__globals__}'.format(add)\n",
}


@pytest.mark.parametrize("name", sorted(REBIND))
def test_rebinding_the_function_under_test_is_refused(ex, name):
    """The published row shows a wrong ``def add``; the program answers with another function."""
    vs = ex.run(_modes(REBIND[name]))
    for mode, v in zip(("calls", "check", "driver"), vs, strict=True):
        assert v.status != "pass", (name, mode, v)
    assert any(v.exc_type in ("ReboundEntryPoint", "ForbiddenConstruct", "SandboxViolation") for v in vs), vs


def test_the_harness_checks_the_def_at_run_time_too(tmp_path):
    """Behind the static policy: the harness itself notices a rebinding that no static check saw
    (through gc and a frame; run against the harness's own functions, in a separate interpreter)."""
    script = (
        "import json, sys\n"
        "from synthflow.sandbox import harness\n"
        "progs = json.loads(sys.argv[1])\n"
        "out = []\n"
        "for code in progs:\n"
        "    job = harness.prepare({'code': code, 'entry_points': ['add'], 'policy': 'verify'})\n"
        "    out.append(harness._program(job)[2])\n"
        "print(json.dumps(out))\n"
    )
    progs = [
        WRONG + "import gc\nfor o in gc.get_objects():\n"
        "    if isinstance(o, dict) and '__builtins__' in o and 'add' in o:\n"
        "        o['add'] = lambda a, b: a + b\n",
        WRONG + "import sys\nsys._getframe(0).f_globals['add'] = lambda a, b: a + b\n",
        HONEST,
        "from functools import lru_cache\n@lru_cache(None)\n" + HONEST,
    ]
    import sys

    p = subprocess.run(
        [sys.executable, "-c", script, json.dumps(progs)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    errs = json.loads(p.stdout)
    assert errs[0][0] == errs[1][0] == "ReboundEntryPoint", errs
    assert errs[2] is None and errs[3] is None, errs


def test_ordinary_programs_still_pass(ex):
    """What the policy must not refuse: namedtuple, dataclasses, typing, recursion with lru_cache,
    eval of arithmetic (HumanEval/160), classes with dunder methods, sys.setrecursionlimit."""
    programs = [
        "import collections\nP = collections.namedtuple('P', 'x y')\ndef add(a, b):\n    return P(a, b).x + b\n",
        "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass P:\n    x: int\n    y: int\n"
        "def add(a, b):\n    return P(a, b).x + b\n",
        "from typing import List\ndef add(a: int, b: int) -> int:\n    xs: List[int] = [a, b]\n    return sum(xs)\n",
        "import functools\n@functools.lru_cache(maxsize=None)\ndef add(a, b):\n    return a if b == 0 else add(a + 1, b - 1)\n",
        "def add(a, b):\n    return eval(f'{a} + {b}')\n",
        "class V:\n    def __init__(self, x):\n        self.x = x\n    def __add__(self, o):\n        return V(self.x + o.x)\n"
        "def add(a, b):\n    return (V(a) + V(b)).x\n",
        "import sys\nsys.setrecursionlimit(5000)\ndef add(a, b):\n    return a + b\n",
    ]
    for code in programs:
        vs = ex.run([Job(code=code, tests=CALL_TESTS, timeout_s=10)])
        assert vs[0].status == "pass", (code, vs[0])


# ---- 4. decoding is per row --------------------------------------------------------------------------
_FORGE = (
    "import gc, json, os, struct\n"
    "def _nonce():\n"
    "    for o in gc.get_objects():\n"
    "        if isinstance(o, dict) and isinstance(o.get('nonce'), str) and len(o['nonce']) == 32:\n"
    "            return o['nonce']\n"
    "def _send(frame):\n"
    "    data = json.dumps(frame).encode()\n"
    "    os.write(3, struct.pack('>I', len(data)) + data)\n"
    "    os._exit(0)\n"
)
MALFORMED = {
    "program_error is a number": "{'nonce': _nonce(), 'program_error': 5, 'results': []}",
    "results is a number": "{'nonce': _nonce(), 'program_error': None, 'results': 7}",
    "bad complex tag": "{'nonce': _nonce(), 'program_error': None, 'results': [{'ok': {'$complex': 5}}]}",
    "bad int tag": "{'nonce': _nonce(), 'program_error': None, 'results': [{'ok': {'$int': 'x'}}]}",
    "unknown tag": "{'nonce': _nonce(), 'program_error': None, 'results': [{'ok': {'$eval': '1'}}]}",
    "a set of lists": "{'nonce': _nonce(), 'program_error': None, 'results': [{'ok': {'$set': [[1]]}}]}",
    "results of the wrong length": "{'nonce': _nonce(), 'program_error': None, 'results': [{'ok': 5}] * 9}",
    "a frame that is a list": "[_nonce()]",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_frame_is_an_error_for_its_row_alone(ex, name):
    program = WRONG + _FORGE + f"_send({MALFORMED[name]})\n"
    jobs = [Job(code=program, tests=CALL_TESTS, timeout_s=5, policy="none")] + _modes(HONEST)
    vs = ex.run(jobs)
    assert vs[0].status != "pass", vs[0]
    assert all(v.status == "pass" for v in vs[1:]), vs[1:]


def test_a_malformed_frame_through_the_cli(tmp_path):
    """``synthflow verify`` goes on: the bad row is an error, the others keep their verdicts."""
    rows = [
        {
            "id": "forged",
            "code": WRONG + _FORGE + f"_send({MALFORMED['bad complex tag']})\n",
            "tests": CALL_TESTS,
        },
        {"id": "honest", "code": HONEST, "tests": CALL_TESTS},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli("verify", str(src), "--format", "jsonl", "--out", str(tmp_path / "v.jsonl"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("1 passed, 1 failed"), p.stdout
    got = {
        json.loads(line)["id"]: json.loads(line)["status"]
        for line in (tmp_path / "v.jsonl").read_text().splitlines()
    }
    assert got == {"forged": "fail", "honest": "pass"}


def test_a_slow_expected_value_spoils_only_its_row(ex):
    slow = Job(code=HONEST, tests="assert add(2, 3) == sum(range(10**10))", timeout_s=5)
    vs = ex.run([slow] + _modes(HONEST))
    assert vs[0].status == "error" and vs[0].exc_type == "ExpectedValue", vs[0]
    assert all(v.status == "pass" for v in vs[1:]), vs[1:]


# ---- 5. driver mode fails closed ---------------------------------------------------------------------
NO_TEST_RUNS = {
    "test functions nobody calls": "def test_add():\n    assert add(1, 2) == 3\n",
    "under a main guard": "if __name__ == '__main__':\n    assert add(1, 2) == 3\n",
    "a unittest class": "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
    "        self.assertEqual(add(1, 2), 3)\n",
    "check without an entry point": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "asserts that call nothing": "x = [1, 2]\nfor y in x:\n    assert y > 0\n",
}


@pytest.mark.parametrize("name", sorted(NO_TEST_RUNS))
def test_a_test_run_that_checked_nothing_fails(ex, name):
    for code in (WRONG, HONEST):
        v = ex.run([Job(code=code, tests=NO_TEST_RUNS[name], tests_trusted=True, timeout_s=5)])[0]
        assert v.status == "fail" and v.exc_type == "NoTestRan", (name, v)


def test_a_vacuous_decomposed_test_fails(ex):
    v = ex.run([Job(code=WRONG, tests='assert "add(1, 2) == 3"\nassert True, "add(1, 2)"')])[0]
    assert v.status == "fail" and v.exc_type == "NoTestRan", v


def test_verify_cli_refuses_duplicate_ids_and_splits_untrusted_passes(tmp_path):
    src = tmp_path / "dup.jsonl"
    rows = [{"id": "a", "code": WRONG, "tests": CALL_TESTS}, {"id": "a", "code": HONEST, "tests": CALL_TESTS}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli("verify", str(src), "--format", "jsonl")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "duplicate id 'a'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    # a generated (untrusted) test that needs driver mode passes only as untrusted, and says so
    rows = [
        {"id": "loop", "code": HONEST, "tests": DRIVER_TESTS},
        {"id": "plain", "code": HONEST, "tests": CALL_TESTS},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli("verify", str(src), "--format", "jsonl")
    assert p.returncode == 0 and p.stdout.startswith("2 passed (1 trusted, 1 untrusted), 0 failed"), p.stdout


# ---- 6. math_pot needs real computation -------------------------------------------------------------
EGGS = "Ana has 3 boxes of 12 eggs. 5 eggs broke. How many eggs are not broken?"
EGGS_HONEST = (
    "def solution():\n    boxes = 3\n    eggs = 12\n    broken = 5\n    return boxes * eggs - broken\n"
)
STATES_30 = {
    "lambda": "solution = lambda: 30\n",
    "default arguments": "def solution(boxes=3, eggs=12, broken=5):\n    return 30\n",
    "module constant": "ANSWER = 30\ndef solution():\n    return ANSWER\n",
    "helper": "def helper(boxes, eggs, broken):\n    return 30\ndef solution():\n    return helper(3, 12, 5)\n",
    "int of a string": "def solution():\n    boxes = 3\n    eggs = 12\n    return int('30')\n",
    "second def": EGGS_HONEST + "def solution():\n    return 30\n",
    "exec": "exec('def solution():\\n    return 30')\n",
    "plus zero times a number": "def solution():\n    boxes = 3\n    eggs = 12\n    broken = 5\n"
    "    return 29 + 1 + 0 * boxes * eggs * broken\n",
    "round": "def solution():\n    boxes = 3\n    return round(29.6)\n",
    "a str result": "def solution():\n    boxes, eggs, broken = 3, 12, 5\n    return str(boxes * eggs - broken - 1)\n",
    "a list result": "def solution():\n    boxes, eggs, broken = 3, 12, 5\n    return [boxes * eggs - broken, 30]\n",
    "a dict result": "def solution():\n    boxes, eggs, broken = 3, 12, 5\n    return {'answer': 30, 'n': boxes * eggs - broken}\n",
    "max with the answer": "def solution():\n    boxes, eggs, broken = 3, 12, 5\n    return max(30, broken)\n",
    "a lambda in a def's place via decorator": "def d(f):\n    return lambda: 30\n@d\ndef solution():\n    return 3 * 12 - 5\n",
    "branch on the numbers": "def solution():\n    boxes, eggs, broken = 3, 12, 5\n"
    "    return 30 if boxes * eggs - broken == 31 else 30\n",
}


def _math_rows(items: dict[str, str], answer: str, problem: str = EGGS, samples: list[str] | None = None):
    return [
        Record(id=name, recipe="t", generator="math_pal", seed_id="s",
               fields={"problem": problem, "program": prog, "answer": answer, **({"sc_programs": samples} if samples else {})})
        for name, prog in items.items()
    ]  # fmt: skip


@pytest.fixture(scope="module")
def math_verify():
    v = Verify({"kind": "math_pot"})
    yield v
    v.close()


def test_math_programs_that_do_not_compute_are_rejected(math_verify):
    res = math_verify(_math_rows(STATES_30, "30"))
    assert not res.kept, [r.id for r in res.kept]
    reasons = {j.record.id: j.reason for j in res.rejects}
    assert len(reasons) == len(STATES_30)
    assert reasons["lambda"] == "verify:rebound_entry_point"
    assert reasons["second def"] == "verify:rebound_entry_point"
    assert reasons["plus zero times a number"] == "verify:trivial_program:constant_under_perturbation"
    assert reasons["a str result"] == "verify:non_numeric_answer"
    honest = math_verify(_math_rows({"honest": EGGS_HONEST}, "31"))
    assert [r.id for r in honest.kept] == ["honest"], [(j.reason, j.record.verdict) for j in honest.rejects]


def test_self_consistency_does_not_launder_constant_samples(math_verify):
    """Five ``lambda: 30`` programs used to pass with self-consistency on: a sample that is not a
    def-made solution does not vote."""
    rows = _math_rows({"main": "solution = lambda: 30\n"}, "30", samples=["solution = lambda: 30\n"] * 4)
    rows += _math_rows(
        {"main-def": "def solution():\n    boxes = 3\n    return 30 + 0 * boxes\n"},
        "30",
        samples=["solution = lambda: 30\n"] * 4,
    )
    assert not math_verify(rows).kept


def test_self_consistency_compares_exact_values(math_verify):
    """2,500,000 against 2.5e+06 and 1234.5678 against 1234.57 used to disagree (votes grouped at 6
    digits): a correct row with a large or precise answer was rejected."""
    big = "A city has 1250 blocks with 2000 people each. How many people live there?"
    big_prog = "def solution():\n    blocks = 1250\n    people = 2000\n    return blocks * people\n"
    big_prog2 = "def solution():\n    people = 2000\n    blocks = 1250\n    total = people * blocks\n    return total\n"
    fine = "A 1234.5678 gram ingot is cut in 1 piece. How many grams is the piece?"
    fine_prog = "def solution():\n    grams = 1234.5678\n    pieces = 1\n    return grams / pieces\n"
    rows = _math_rows(
        {"big": big_prog}, "2500000", problem=big, samples=[big_prog, big_prog2, big_prog, big_prog2]
    )
    rows += _math_rows({"fine": fine_prog}, "1234.5678", problem=fine, samples=[fine_prog] * 4)
    res = math_verify(rows)
    assert sorted(r.id for r in res.kept) == ["big", "fine"], [
        (j.reason, j.record.verdict["message"]) for j in res.rejects
    ]


# ---- 7. CodeT as the paper scores it ----------------------------------------------------------------
def _codet_row(candidates: list[str], tests: list[str]) -> Record:
    return Record(id="p", recipe="t", generator="code_codet", seed_id="s",
                  fields={"problem": "Add two numbers.", "entry_point": "add", "candidates": candidates,
                          "all_tests": tests, "solution": candidates[0], "tests": "\n".join(tests)})  # fmt: skip


@pytest.fixture(scope="module")
def codet_verify():
    v = Verify({"kind": "codet", "timeout_s": 2})
    yield v
    v.close()


def test_codet_renamed_copies_and_weak_tests_do_not_outvote_the_honest_candidate(codet_verify):
    wrong_copies = [
        "def add(a, b):\n    return a - b",
        "def add(x, y):\n    return x - y",
        "def add(p, q):\n    # subtract\n    return p - q",
        "def add(m, n):\n    return (m - n)",
    ]
    honest = ["def add(a, b):\n    return a + b", "def add(x, y):\n    return y + x"]
    weak = [
        'assert "add(1, 2) == 3"',
        'assert True, "add(5, 5)"',
        "assert add(1, 1) != 7",
        "assert add(3, 3) >= -10",
    ]
    real = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]
    r = _codet_row(wrong_copies + honest, weak + real)
    out = codet_verify([r])
    assert [x.id for x in out.kept] == ["p"], [(j.reason, j.record.verdict) for j in out.rejects]
    assert "a + b" in r.fields["solution"] or "y + x" in r.fields["solution"]
    assert r.fields["codet_tests_total"] == 3  # the weak ones do not count
    # the wrong copies alone are one group: no consensus of distinct candidates
    r = _codet_row(wrong_copies, ["assert add(2, 2) == 0", "assert add(5, 5) == 0", "assert add(1, 1) == 0"])
    out = codet_verify([r])
    assert not out.kept and out.rejects[0].reason == "verify:codet_small_consensus"


def test_codet_runs_each_test_in_fresh_state(codet_verify):
    """A candidate that remembers its calls passes both ``add(1, 1) == 2`` and ``add(1, 1) == 3``
    when the tests share a process."""
    stateful = "_seen = []\ndef add(a, b):\n    _seen.append(1)\n    return a + b + len(_seen) - 1"
    stateful2 = "_n = [0]\ndef add(x, y):\n    _n[0] += 1\n    return x + y + _n[0] - 1"
    r = _codet_row(
        [stateful, stateful2], ["assert add(1, 1) == 2", "assert add(1, 1) == 3", "assert add(2, 2) == 5"]
    )
    out = codet_verify([r])
    assert not out.kept
    assert r.fields["codet_tests_passed"] == 1  # only the first: every test starts from a fresh process


def test_codet_counts_samples_as_weight(codet_verify):
    """The same solution sampled four times is one group of weight 4 (CodeT's frequency signal)."""
    a = "def add(a, b):\n    return a + b"
    b = "def add(a, b):\n    return b + a"
    wrong = "def add(a, b):\n    return a * b"
    tests = ["assert add(2, 2) == 4", "assert add(1, 2) == 3", "assert add(0, 5) == 5"]
    r = _codet_row([a, a, a, a, b, wrong, wrong], tests)
    out = codet_verify([r])
    assert [x.id for x in out.kept] == ["p"]
    assert r.fields["codet_score"] == 5 * 3 and r.fields["codet_consensus"] == 2


# ---- 8. keys, IPC objects and processes do not survive: the kernel side ------------------------------
def test_no_kernel_key_or_ipc_object_survives_a_job(ex):
    """A job tries to leave a key and a SysV queue behind (through ctypes, which the audit hook
    refuses; the seccomp test in test_sandbox.py shows the kernel refuses the same calls raw). The
    host's keyring has no such key afterwards, and a later job finds no queue."""
    leave = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.syscall(248, b'user', b'synthflow-leak', b'30', 2, -3)\n"  # add_key into the user keyring
        "libc.syscall(68, 0x5F11, 0o1666)\n"  # msgget(IPC_CREAT)
    )
    v = ex.run([Job(code=leave, policy="none")])[0]
    assert v.status == "blocked", v
    with open("/proc/keys") as f:
        assert "synthflow-leak" not in f.read()
    if os.path.exists("/proc/sysvipc/msg"):
        with open("/proc/sysvipc/msg") as f:
            assert " 24337 " not in f.read()  # 0x5F11
    from .helpers import sandbox_processes

    assert not sandbox_processes()


# ---- 9. found by an adversarial review of the above --------------------------------------------------
REVIEW_PROGRAMS = {
    # a function named like a builtin used to be left out of the call namespace: the builtin ran
    "a def named like a builtin": ("def abs(x):\n    return x\n", "assert abs(-3) == 3", "abs"),
    "a def named max": ("def max(a, b):\n    return a\n", "assert max(1, 2) == 2", None),
    # the decorator replaced through the module, and the wrapper's __wrapped__ rewritten
    "functools.lru_cache patched": (
        "import functools\nclass _C:\n    def __new__(cls, a, b):\n        return a + b\n"
        "functools.lru_cache = lambda *a, **k: (lambda f: _C)\n@functools.lru_cache(maxsize=None)\n" + WRONG,
        CALL_TESTS,
        None,
    ),
    "__wrapped__ rewritten": (
        "import functools\n@functools.lru_cache(None)\n" + WRONG + "add.__wrapped__ = lambda a, b: a + b\n",
        CALL_TESTS,
        None,
    ),
    # attribute access by strings: sys.modules, the harness, __globals__
    "string.Formatter().get_field": (
        "import string, sys\n_F = string.Formatter()\ndef _get(obj, path):\n"
        "    return _F.get_field('0' + path, [obj], {})[0]\n"
        + WRONG
        + "_get(add, '.' + '_' * 2 + 'globals' + '_' * 2)['add'] = lambda a, b: a + b\n",
        CALL_TESTS,
        None,
    ),
    "a module bound to a variable": (
        "import json\nm = json.decoder\n" + WRONG + "m.re.sys.modules\n",
        CALL_TESTS,
        None,
    ),
    # check(candidate): the program defines candidate, not the entry point
    "the program's own candidate": (
        "def candidate(a, b):\n    return a + b\n",
        "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "add",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(REVIEW_PROGRAMS))
def test_review_attacks_fail(ex, name):
    code, tests, ep = REVIEW_PROGRAMS[name]
    v = ex.run([Job(code=code, tests=tests, entry_point=ep, timeout_s=5)])[0]
    assert v.status != "pass", (name, v)


def test_a_deep_program_is_refused_even_from_a_deep_call_stack(ex):
    """The host's parser used to hit its recursion limit when called deep in a pipeline, and the
    policy was then skipped; source too deep to check is refused, never left unchecked."""
    code = "import os, gc\n" + HONEST + "x = " + "1 + " * 2950 + "1\n"

    def deep(n):
        return ex.run([Job(code=code, tests=CALL_TESTS)])[0] if n == 0 else deep(n - 1)

    for depth in (0, 40):
        v = deep(depth)
        assert v.status == "fail" and v.exc_type == "ForbiddenConstruct", v


def test_one_row_too_deep_to_read_does_not_stop_the_batch(ex, math_verify):
    vs = ex.run([Job(code=HONEST, tests="assert add(1, 2) == " + "1 + " * 3000 + "2")] + _modes(HONEST))
    assert vs[0].status != "pass" and all(v.status == "pass" for v in vs[1:]), vs
    deep = (
        "def solution():\n    boxes, eggs, broken = 3, 12, 5\n    return boxes * eggs - broken"
        + " + 0" * 3000
        + "\n"
    )
    res = math_verify(_math_rows({"deep": deep, "honest": EGGS_HONEST}, "31"))
    assert "honest" in [r.id for r in res.kept]


MORE_STATES_30 = {
    "a class with __new__": "class solution:\n    def __new__(cls):\n        return 30\n",
    "a def inside if": "if True:\n    def solution():\n        return 30\n",
    "a def inside try": "try:\n    def solution():\n        boxes = 3\n        return 30 + 0 * boxes\nexcept Exception:\n    pass\n",
    "a default that is not a problem number": "def solution(extra=29):\n    return extra + 1\n",
}


def test_more_math_programs_that_do_not_compute_are_rejected(math_verify):
    assert not math_verify(_math_rows(MORE_STATES_30, "30")).kept
    # nor as self-consistency samples: they do not vote
    rows = _math_rows({"main": EGGS_HONEST.replace("broken = 5", "broken = 6")}, "30",
                      samples=list(MORE_STATES_30.values()))  # fmt: skip
    assert not math_verify(rows).kept


def test_hedged_stated_answers_are_rejected(math_verify):
    rows = [
        Record(id=a, recipe="t", generator="math_pal", seed_id="s",
               fields={"problem": EGGS, "program": EGGS_HONEST, "answer": a})
        for a in ("30 or 31", "[30, 31]", "30 to 31", "3100%", "31")
    ]  # fmt: skip
    res = math_verify(rows)
    assert [r.id for r in res.kept] == ["31"]
    assert {j.record.id: j.reason for j in res.rejects}["30 or 31"] == "verify:ambiguous_answer"


def test_codet_vacuous_tolerances_duplicates_and_shadowed_lambdas(codet_verify):
    honest = [
        "def add(a, b):\n    return a + b",
        "def add(x, y):\n    return y + x",
        "def add(p, q):\n    return q + p",
    ]
    loose = ["import math\nassert abs(add(1, 2) - 3) < 1e999", "assert math.isclose(add(5, 5), 10, abs_tol=1e300)",
             "assert math.isclose(add(5, 6), 11, rel_tol=1)", "assert abs(add(3, 4) - 7) < 10**100"]  # fmt: skip
    r = _codet_row(["def add(a, b):\n    return a - b"] + honest, loose)
    out = codet_verify([r])
    assert not out.kept and out.rejects[0].reason == "verify:codet_empty"
    # one test written three times counts once
    r = _codet_row(
        ["def add(a, b):\n    return a * b", "def add(a, b):\n    return a ** b"],
        ["assert add(2, 2) == 4"] * 3,
    )
    out = codet_verify([r])
    assert not out.kept and r.fields["codet_tests_total"] == 1
    # a lambda's own a is not the outer a: these two are different programs
    from synthflow.generators.code_codet import normalized_ast

    a = "def add(a, b):\n    g = lambda a: a + b\n    return g(0)"
    b = "def add(a, b):\n    g = lambda c: a + b\n    return g(0)"
    assert normalized_ast(a) != normalized_ast(b)


HONEST_PROGRAMS = {
    "math in an expected value": (
        "import math\ndef area(r):\n    return math.pi * r * r\n",
        "assert abs(area(2) - math.pi * 4) < 1e-6",
        None,
    ),  # fmt: skip
    "attributes of its own objects": (
        "class T:\n    def __init__(self):\n        self.signal = 1\n        self.modules = 2\n"
        "    def zero(self):\n        return self.signal * 0 + self.modules * 0\n"
        "def add(a, b):\n    return a + b + T().zero()\n",
        CALL_TESTS,
        None,
    ),
    "a format field named like a module": (
        "def add(a, b):\n    return int('{modules}'.format(modules=a + b))\n",
        CALL_TESTS,
        None,
    ),  # fmt: skip
    "a star import from math": (
        "from math import *\ndef add(a, b):\n    return int(fsum([a, b]))\n",
        CALL_TESTS,
        None,
    ),
    "a main block that reads stdin": (
        HONEST + "if __name__ == '__main__':\n    print(add(int(input()), 2))\n",
        CALL_TESTS,
        None,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(HONEST_PROGRAMS))
def test_honest_programs_the_review_found_refused_now_pass(ex, name):
    code, tests, ep = HONEST_PROGRAMS[name]
    v = ex.run([Job(code=code, tests=tests, entry_point=ep, timeout_s=5)])[0]
    assert v.status == "pass", (name, v)


def test_fraction_and_decimal_answers_count(math_verify):
    rows = _math_rows(
        {
            "fraction": "from fractions import Fraction\ndef solution():\n    boxes, eggs, broken = 3, 12, 5\n"
            "    return Fraction(boxes * eggs - broken)\n",
            "decimal": "from decimal import Decimal\ndef solution():\n    boxes, eggs, broken = 3, 12, 5\n"
            "    return Decimal(boxes * eggs - broken)\n",
        },
        "31",
    )
    assert sorted(r.id for r in math_verify(rows).kept) == ["decimal", "fraction"]
