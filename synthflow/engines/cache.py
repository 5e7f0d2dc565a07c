"""Content-addressed response cache (SQLite, WAL).

The key hashes model, rendered prompt (messages), sampling params, structured-output schema and the
sample index. Each engine batch is committed in one transaction as soon as the engine returns, so a
run killed with ``kill -9`` keeps every batch that finished, and its rerun regenerates none of them.
Prompt logprobs (scorers such as IFD) are cached the same way, keyed by model and token ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthflow.engines.base import Completion, Request, Sampling

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    seconds REAL,
    created_at REAL
)
"""
LOGPROB_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompt_logprobs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    logprobs BLOB NOT NULL,
    created_at REAL
)
"""


def cache_key(model_id: str, req: Request, sampling: Sampling) -> str:
    payload = {
        "model": model_id,
        "messages": req.messages,
        "sampling": sampling.as_dict(),
        "schema": req.json_schema,
        "sample": req.sample_index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def logprob_key(model_id: str, token_ids: list[int]) -> str:
    payload = json.dumps({"model": model_id, "prompt_logprobs": list(token_ids)}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _set_wal(conn: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Switch to WAL, waiting out other processes that open the same new file at the same moment.

    SQLite does not call the busy handler for a journal-mode change, so two processes creating one
    cache at once can get ``database is locked`` at once; the switch is retried instead.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


class ResponseCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        _set_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(SCHEMA)
        self._conn.execute(LOGPROB_SCHEMA)
        self._conn.commit()

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, seconds FROM responses WHERE key IN (%s)"
                for row in self._conn.execute(q % ",".join("?" * len(chunk)), chunk):
                    out[row[0]] = Completion(
                        text=row[1],
                        finish_reason=row[2] or "",
                        prompt_tokens=row[3] or 0,
                        completion_tokens=row[4] or 0,
                        seconds=row[5] or 0.0,
                        cached=True,
                    )
        return out

    def put_many(self, model_id: str, items: list[tuple[str, Completion]]) -> None:
        now = time.time()
        rows = [
            (k, model_id, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.seconds, now)
            for k, c in items
        ]
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?)", rows)

    def get_logprobs(self, keys: list[str]) -> dict[str, list[float | None]]:
        """Cached prompt logprobs (float32; the first position, which has none, is None)."""
        out: dict[str, list[float | None]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = "SELECT key, logprobs FROM prompt_logprobs WHERE key IN (%s)"
                for key, blob in self._conn.execute(q % ",".join("?" * len(chunk)), chunk):
                    vals = array("f")
                    vals.frombytes(blob)
                    out[key] = [None if v != v else float(v) for v in vals]  # NaN marks None
        return out

    def put_logprobs(self, model_id: str, items: list[tuple[str, list[float | None]]]) -> None:
        now = time.time()
        rows = [
            (k, model_id, array("f", [float("nan") if v is None else v for v in lps]).tobytes(), now)
            for k, lps in items
        ]
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO prompt_logprobs VALUES (?,?,?,?)", rows)

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _NoGuard:
    """Without a pool: start the engine on first use, no locking or timing."""

    @contextlib.contextmanager
    def call(self, cached: Any) -> Iterator[None]:
        if not cached._started:
            cached.engine.start()
            cached._started = True
        yield

    def exclusive(self, cached: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class CachedEngine:
    """Wraps an engine: answers hits from the cache, sends all misses to the engine in one call.
    Keeps its own token and engine-second accounting, so each role (generator, judge, ...) that wraps
    a shared engine is counted apart."""

    def __init__(self, engine: Any, cache: ResponseCache, role: str = "generator", guard: Any = None):
        self.engine = engine
        self.cache = cache
        self.role = role
        # serializes calls into one engine instance across threads, and times them (EnginePool)
        self.guard = guard if guard is not None else _NoGuard()
        self.hits = 0
        self.misses = 0
        self.engine_seconds = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._started = False

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        keys = [cache_key(self.engine.model_id, r, sampling) for r in requests]
        found = self.cache.get_many(keys)
        results: list[Completion | None] = [found.get(k) for k in keys]
        miss_idx = [i for i, c in enumerate(results) if c is None]
        self.hits += len(requests) - len(miss_idx)
        if miss_idx:
            with self.guard.call(self):
                t0 = time.perf_counter()
                fresh = self.engine.generate([requests[i] for i in miss_idx], sampling)
                self.engine_seconds += time.perf_counter() - t0
            self.misses += len(fresh)
            self.cache.put_many(
                self.engine.model_id, [(keys[i], c) for i, c in zip(miss_idx, fresh, strict=True)]
            )
            for i, c in zip(miss_idx, fresh, strict=True):
                results[i] = c
            for c in fresh:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens
        return results  # type: ignore[return-value]

    # ---- token-level scoring (engines that expose a tokenizer and prompt logprobs) -------------
    def supports_logprobs(self) -> bool:
        return callable(getattr(self.engine, "prompt_logprobs", None))

    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation under the model's chat template (the tokenizer is the
        engine's own: no tokenizing while another thread's call is inside the engine)."""
        with self.guard.exclusive(self):
            return self.engine.chat_ids(messages, add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        with self.guard.exclusive(self):
            return self.engine.encode(text)

    @property
    def max_model_len(self) -> int:
        return int(getattr(self.engine, "max_model_len", 2048))

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        """Log-probability of every prompt token given the tokens before it (None for the first);
        hits come from the cache, all misses go to the engine in one call."""
        keys = [logprob_key(self.engine.model_id, p) for p in prompts]
        found = self.cache.get_logprobs(keys)
        results: list[list[float | None] | None] = [found.get(k) for k in keys]
        miss_keys = list(dict.fromkeys(k for k, r in zip(keys, results, strict=True) if r is None))
        self.hits += len(prompts) - len(miss_keys)
        if miss_keys:  # identical prompts of the batch are computed once
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            with self.guard.call(self):
                t0 = time.perf_counter()
                fresh = self.engine.prompt_logprobs([prompts[first[k]] for k in miss_keys])
                self.engine_seconds += time.perf_counter() - t0
            self.misses += len(miss_keys)
            self.prompt_tokens += sum(len(prompts[first[k]]) for k in miss_keys)
            self.cache.put_logprobs(self.engine.model_id, list(zip(miss_keys, fresh, strict=True)))
            got = dict(zip(miss_keys, fresh, strict=True))
            results = [r if r is not None else got[k] for k, r in zip(keys, results, strict=True)]
        return results  # type: ignore[return-value]

    def usage(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "model": self.model_id,
            "hits": self.hits,
            "misses": self.misses,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "engine_seconds": round(self.engine_seconds, 2),
        }

    def close(self) -> None:
        """Stop the engine if this role started it; a later call starts it again."""
        if self._started:
            self.engine.close()
            self._started = False
