"""The content-addressed response cache: hit and miss paths, key contents."""

from __future__ import annotations

from synthflow.engines.base import Request, Sampling
from synthflow.engines.cache import CachedEngine, ResponseCache, cache_key
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
