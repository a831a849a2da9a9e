"""The LLM planner against a local fake OpenAI-compatible server on 127.0.0.1: valid, invalid, slow, down."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from likeness.compose.llm import LLMPlanError, LLMPlanner, extract_json

CONCEPTS = {"mochi": ("dog", 1.5), "kettle": ("teapot", 1.0)}
CANVAS = (1024, 1024)
GOOD = {"objects": [{"name": "mochi", "box": [100, 500, 450, 300]}, {"name": "kettle", "box": [650, 600, 250, 250]}],
        "background": "a sunny garden"}


class FakeLLM:
    """Serves queued replies in order (the last one repeats); records every request body."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                reply = fake.replies.pop(0) if len(fake.replies) > 1 else fake.replies[0]
                if isinstance(reply, tuple) and reply[0] == "sleep":
                    time.sleep(reply[1])
                    reply = reply[2]
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                content = reply if isinstance(reply, str) else json.dumps(reply)
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm():
    servers = []

    def start(*replies):
        servers.append(FakeLLM(replies))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def planner(url, **kw):
    return LLMPlanner(url, "fake-llm-7b", api_key="k", timeout=kw.pop("timeout", 2.0), backoff=0.01, **kw)


def test_valid_reply_gives_a_validated_layout_with_the_model_recorded(fake_llm):
    server = fake_llm("Sure! ```json\n" + json.dumps(GOOD) + "\n```")
    layout = planner(server.url).plan(CONCEPTS, CANVAS)
    assert layout.planner == "llm:fake-llm-7b" and layout.background == "a sunny garden"
    # The LLM's 450x300 box already has aspect 1.5; kettle's 250x250 too.
    assert layout.boxes["mochi"].as_list() == [100, 500, 550, 800]
    assert layout.boxes["kettle"].as_list() == [650, 600, 900, 850]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k"
    messages = request["body"]["messages"]
    assert request["body"]["model"] == "fake-llm-7b" and messages[0]["role"] == "system"
    assert "3%" in messages[0]["content"] and "25%" in messages[0]["content"]
    assert sum(m["role"] == "assistant" for m in messages) == 2  # the few-shot examples
    assert "mochi (dog, aspect 1.50)" in messages[-1]["content"]


def test_invalid_json_then_overlap_are_sent_back_and_retried(fake_llm):
    overlapping = {"objects": [{"name": "mochi", "box": [100, 100, 450, 300]}, {"name": "kettle", "box": [300, 200, 250, 250]}],
                   "background": "a park"}
    server = fake_llm("I think the dog goes left.", overlapping, GOOD)
    layout = planner(server.url, retries=3).plan(CONCEPTS, CANVAS)
    assert layout.notes[0] == "attempts: 3"
    assert "invalid JSON" in layout.notes[1] and "overlap" in layout.notes[2]
    last = server.requests[-1]["body"]["messages"]
    assert "overlap" in last[-1]["content"] and last[-2]["role"] == "assistant"


@pytest.mark.parametrize("reply, status", [
    ("not json at all", "invalid_json"),
    ({"objects": [{"name": "mochi", "box": [0, 0, 10]}], "background": "x"}, "invalid_schema"),
    ({"objects": [{"name": "mochi", "box": [0, 0, 400, 267]}], "background": "x"}, "invalid_schema"),  # kettle missing
    ({"objects": [{"name": "mochi", "box": [0, 0, 90, 60]}, {"name": "kettle", "box": [500, 500, 300, 300]}],
      "background": "x"}, "invalid_layout"),  # mochi below 3%
    (500, "http_error"),
])
def test_persistently_bad_replies_end_in_a_clear_error(fake_llm, reply, status):
    server = fake_llm(reply)
    with pytest.raises(LLMPlanError) as info:
        planner(server.url, retries=2).plan(CONCEPTS, CANVAS)
    assert info.value.status == status and info.value.attempts == 2
    assert len(server.requests) == 2 and "fake-llm-7b" in str(info.value)


def test_slow_server_times_out_within_the_bound(fake_llm):
    server = fake_llm(("sleep", 1.5, GOOD))
    tic = time.perf_counter()
    with pytest.raises(LLMPlanError) as info:
        planner(server.url, timeout=0.2, retries=2).plan(CONCEPTS, CANVAS)
    assert info.value.status == "timeout"
    assert time.perf_counter() - tic < 2.0  # 2 x 0.2 s + backoff, never a hang


def test_slow_first_answer_then_fast_one_succeeds(fake_llm):
    server = fake_llm(("sleep", 1.0, GOOD), GOOD)
    layout = planner(server.url, timeout=0.3, retries=2).plan(CONCEPTS, CANVAS)
    assert "no answer within" in layout.notes[1]


def test_unreachable_server(fake_llm):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(LLMPlanError) as info:
        planner(f"http://127.0.0.1:{port}/v1", retries=2, timeout=0.5).plan(CONCEPTS, CANVAS)
    assert info.value.status == "unreachable" and "unreachable" in str(info.value)


def test_extract_json_accepts_fenced_and_embedded_objects():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here: {"a": [1, 2]} done') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("[1, 2]")
