"""The content-addressed response cache: hit and miss paths, key contents."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from synthflow.engines.base import Completion, Request, Sampling
from synthflow.engines.cache import CachedEngine, ResponseCache, _set_wal, cache_key
from synthflow.engines.fake import FakeEngine

SCRIPT = [{"match": "hello", "reply": "hi {i}"}, {"match": "", "reply": "other"}]


def _req(text, i=0):
    return Request(messages=[{"role": "user", "content": text}], sample_index=i)


def test_miss_then_hit(tmp_path):
    eng = FakeEngine(SCRIPT)
    c = CachedEngine(eng, ResponseCache(tmp_path / "c.sqlite3"))
    s = Sampling()
    first = c.generate([_req("hello"), _req("hello", 1), _req("bye")], s)
    assert [x.text for x in first] == ["hi 0", "hi 1", "other"]
    assert not any(x.cached for x in first) and eng.calls == 1 and c.misses == 3
    # one new prompt among cached ones: one engine call with only the miss
    second = c.generate([_req("hello"), _req("new"), _req("bye")], s)
    assert [x.cached for x in second] == [True, False, True]
    assert eng.calls == 2 and eng.prompts_seen == 4 and c.hits == 2
    assert second[0].completion_tokens == first[0].completion_tokens


def test_cache_survives_reopen(tmp_path):
    s = Sampling()
    c1 = CachedEngine(FakeEngine(SCRIPT), ResponseCache(tmp_path / "c.sqlite3"))
    c1.generate([_req("hello")], s)
    c1.cache.close()
    eng = FakeEngine(SCRIPT)
    c2 = CachedEngine(eng, ResponseCache(tmp_path / "c.sqlite3"))
    assert c2.generate([_req("hello")], s)[0].cached and eng.calls == 0


def test_key_covers_model_prompt_sampling_and_sample_index():
    base = cache_key("m", _req("x"), Sampling())
    assert cache_key("m2", _req("x"), Sampling()) != base
    assert cache_key("m", _req("y"), Sampling()) != base
    assert cache_key("m", _req("x", 1), Sampling()) != base
    assert cache_key("m", _req("x"), Sampling(temperature=0.1)) != base
    assert cache_key("m", _req("x"), Sampling(seed=1)) != base
    assert cache_key("m", _req("x"), Sampling()) == base


class _BusyOnce:
    """A connection whose journal-mode switch reports `database is locked` twice, as SQLite does
    when another process is creating the same file (the busy handler is not called for it)."""

    def __init__(self, fails: int):
        self.fails = fails
        self.calls: list[str] = []

    def execute(self, sql: str):
        self.calls.append(sql)
        if sql == "PRAGMA journal_mode=WAL" and self.fails:
            self.fails -= 1
            raise sqlite3.OperationalError("database is locked")

        class _Row:
            def fetchone(self):
                return ("delete",)

        return _Row()


def test_wal_switch_waits_out_a_concurrent_creator():
    conn = _BusyOnce(fails=2)
    _set_wal(conn)
    assert conn.calls.count("PRAGMA journal_mode=WAL") == 3


def test_wal_switch_gives_up_after_its_deadline():
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _set_wal(_BusyOnce(fails=10**9), wait_s=0.05)


def _open_and_write(path: str) -> str:
    c = ResponseCache(path)
    c.put_many("m", [(f"k{i}", Completion(text="x", finish_reason="stop")) for i in range(5)])
    return "ok"


def test_processes_creating_one_cache_at_once_all_open_it(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(3):
            path = str(tmp_path / f"c{round_}.sqlite3")
            assert pool.map(_open_and_write, [path] * 8) == ["ok"] * 8
