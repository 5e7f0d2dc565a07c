"""The OpenAI-compatible engine against a local HTTP server: batching with bounded concurrency,
retries with backoff on 5xx/429, timeouts, prefill flags, and a clear error when it is down."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthflow.engines.base import Request, Sampling
from synthflow.engines.openai_engine import OpenAIEngine
from synthflow.errors import EngineUnavailable


class Server:
    def __init__(self, fail_first: int = 0, delay: float = 0.0, reply=None):
        self.fail_first = fail_first
        # reply(request body) -> (status, body) to send instead of the echo, or None for the echo
        self.reply = reply
        self.delay = delay
        self.bodies: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "served-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                    n = len(outer.bodies)
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                try:
                    time.sleep(outer.delay)
                    if n <= outer.fail_first:
                        return self._send(503, {"error": "busy"})
                    if outer.reply is not None and (got := outer.reply(body)) is not None:
                        return self._send(*got)
                    text = "echo: " + body["messages"][-1]["content"]
                    self._send(
                        200,
                        {
                            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                        },
                    )
                finally:
                    with outer.lock:
                        outer.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _reqs(n):
    return [Request(messages=[{"role": "user", "content": f"q{i}"}], sample_index=i) for i in range(n)]


def test_batch_in_order_with_bounded_concurrency(server):
    server.delay = 0.05
    eng = OpenAIEngine(server.url, concurrency=4, show_progress=False)
    out = eng.generate(_reqs(20), Sampling(temperature=0.3, max_tokens=7))
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(20)]
    assert eng.model == "served-model"  # picked from /models
    assert 1 < server.max_active <= 4
    b = server.bodies[0]
    assert b["temperature"] == 0.3 and b["max_tokens"] == 7 and b["model"] == "served-model"
    assert out[0].prompt_tokens == 3 and out[0].completion_tokens == 2


def test_retries_with_backoff():
    s = Server(fail_first=3)
    try:
        eng = OpenAIEngine(s.url, concurrency=1, backoff_s=0.01, max_retries=4, show_progress=False)
        assert eng.generate(_reqs(1), Sampling())[0].text == "echo: q0"
        assert len(s.bodies) == 4
        eng2 = OpenAIEngine(s.url, concurrency=1, backoff_s=0.01, max_retries=1, show_progress=False)
        s.fail_first = 10**6
        with pytest.raises(EngineUnavailable, match="gave up after 2 tries"):
            eng2.generate(_reqs(1), Sampling())
    finally:
        s.close()


def test_timeout_is_retried_then_reported():
    s = Server(delay=1.0)
    try:
        eng = OpenAIEngine(s.url, timeout_s=0.2, max_retries=1, backoff_s=0.01, show_progress=False)
        with pytest.raises(EngineUnavailable, match="Timeout"):
            eng.generate(_reqs(1), Sampling())
    finally:
        s.close()


def test_prefill_and_structured_output_flags(server):
    eng = OpenAIEngine(server.url, model="m", show_progress=False)
    r = Request(
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "Problem:"}],
        json_schema=None,
    )
    eng.generate(
        [r, Request(messages=[{"role": "user", "content": "y"}], json_schema={"type": "object"})], Sampling()
    )
    by_last = {b["messages"][-1]["content"]: b for b in server.bodies}
    assert (
        by_last["Problem:"]["continue_final_message"] is True
        and by_last["Problem:"]["add_generation_prompt"] is False
    )
    assert by_last["y"]["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_down_endpoint_is_a_user_error():
    with pytest.raises(EngineUnavailable, match="not reachable"):
        OpenAIEngine("http://127.0.0.1:9/v1", show_progress=False).start()


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ((500, {"error": "model crashed"}), "failed after 1 tries (HTTP 500)"),
        ((400, {"error": "unknown model"}), "answered HTTP 400: "),
        ((200, {"id": "x"}), "answered without choices[0].message"),
        ((200, {"choices": []}), "answered without choices[0].message"),
        ((200, "not an object"), "answered without choices[0].message"),
    ],
)
def test_preflight_makes_one_real_chat_call(reply, says):
    """An endpoint that lists its models but fails chat calls is caught before the run starts."""
    s = Server(reply=lambda _body: reply)
    try:
        eng = OpenAIEngine(s.url, model="m", show_progress=False, max_retries=0)
        with pytest.raises(EngineUnavailable, match=f"test chat call to model 'm' {re.escape(says)}"):
            eng.preflight()
        assert s.bodies[-1]["max_tokens"] == 1
    finally:
        s.close()


def test_preflight_passes_a_working_endpoint_and_retries_a_busy_one():
    s = Server(fail_first=2)
    try:
        OpenAIEngine(s.url, show_progress=False, backoff_s=0.01).preflight()  # 2 x 503, then an answer
        assert len(s.bodies) == 3 and s.bodies[-1]["model"] == "served-model"
    finally:
        s.close()
