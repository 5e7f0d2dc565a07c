"""Content-addressed response cache (SQLite, WAL).

The key hashes model, rendered prompt (messages), sampling params, structured-output schema and the
sample index. Each engine batch is committed in one transaction as soon as the engine returns, so a
run killed with ``kill -9`` keeps every batch that finished, and its rerun regenerates none of them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
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


def cache_key(model_id: str, req: Request, sampling: Sampling) -> str:
    payload = {
        "model": model_id,
        "messages": req.messages,
        "sampling": sampling.as_dict(),
        "schema": req.json_schema,
        "sample": req.sample_index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(SCHEMA)
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

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedEngine:
    """Wraps an engine: answers hits from the cache, sends all misses to the engine in one call."""

    def __init__(self, engine: Any, cache: ResponseCache):
        self.engine = engine
        self.cache = cache
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
            if not self._started:
                self.engine.start()
                self._started = True
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

    def close(self) -> None:
        if self._started:
            self.engine.close()
