"""backdrop.client against tiny real HTTP servers on loopback (stdlib ``http.server`` in a thread).

Each server answers from a script the test sets: junk ``Retry-After`` values, 503s, redirects to
a second origin. The client must never crash on a header, retry a bounded number of times, and
never send its API key to another origin. (The client against the real Serve stack is in
test_serve.py.)
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backdrop.client import BackdropClient, ServiceError

KEY = "client-test-key-51d0"
MODELS = {"model": "backdrop", "default": {"categories": ["mug"]}}


class Script:
    """What a server answers, request by request (the last entry repeats), and what it saw."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen: list[dict] = []  # method, path and headers of every request

    def next(self):
        return self.answers[min(len(self.seen) - 1, len(self.answers) - 1)]


@contextmanager
def server(script: Script, host: str = "127.0.0.1"):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            script.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
            status, headers, body = script.next()
            body = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):  # quiet
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=30)


def busy(retry_after: str | None) -> tuple:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return 503, headers, {"error": {"code": "overloaded", "message": "busy", "request_id": "r1"}}


OK = (200, {}, MODELS)


@pytest.mark.parametrize("retry_after", ["-1", "nan", "NaN", "soon", "", "  ", "-inf", "0",
                                         "0.01", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo 0000 99:99:99",
                                         None])
def test_any_retry_after_is_retried_without_a_crash(retry_after):
    """Junk, negative, NaN, dates: each 503 is retried and the answer after it arrives."""
    script = Script([busy(retry_after), busy(retry_after), OK])
    with server(script) as url:
        client = BackdropClient(url, KEY, max_retries=4, max_wait_s=5, backoff_s=0.01)
        assert client.models() == MODELS
    assert len(script.seen) == 3


def test_a_key_over_its_quota_is_retried_after_retry_after():
    """429 (the key's rate or concurrency quota) is retried like a 503; a 422 is not."""
    over = (429, {"Retry-After": "0.01"}, {"error": {"code": "too_many_requests", "message": "slow down",
                                                      "request_id": "r2"}})
    script = Script([over, OK])
    with server(script) as url:
        assert BackdropClient(url, KEY, max_retries=2, max_wait_s=5, backoff_s=0.01).models() == MODELS
    assert len(script.seen) == 2
    bad = (422, {}, {"error": {"code": "invalid_parameter", "message": "no", "request_id": "r3"}})
    script = Script([bad, OK])
    with server(script) as url:
        with pytest.raises(ServiceError) as e:
            BackdropClient(url, KEY, max_retries=2, max_wait_s=5, backoff_s=0.01).models()
    assert e.value.status == 422 and len(script.seen) == 1


@pytest.mark.parametrize("retry_after", ["99999999999", "1e300", "1e400", "inf", "Infinity"])
def test_a_huge_retry_after_ends_retrying_at_once(retry_after):
    """Waiting longer than the client's budget is not an option: the 503 is raised, no sleep."""
    script = Script([busy(retry_after)])
    with server(script) as url:
        client = BackdropClient(url, KEY, max_retries=4, max_wait_s=5, backoff_s=0.01)
        with pytest.raises(ServiceError) as e:
            client.models()
    assert e.value.status == 503 and e.value.code == "overloaded" and e.value.request_id == "r1"
    assert len(script.seen) == 1


@pytest.mark.parametrize("retry_after", ["0", "junk", "-5", None])
def test_attempts_are_bounded(retry_after):
    script = Script([busy(retry_after)])  # always busy
    with server(script) as url:
        client = BackdropClient(url, KEY, max_retries=3, max_wait_s=5, backoff_s=0.01)
        with pytest.raises(ServiceError) as e:
            client.models()
    assert e.value.status == 503
    assert len(script.seen) == 4  # 1 + max_retries


def test_the_wait_budget_bounds_the_retries():
    """Retry-After 0.2 s with a 0.5 s budget: two waits fit, the third would not."""
    script = Script([busy("0.2")])
    with server(script) as url:
        client = BackdropClient(url, KEY, max_retries=10, max_wait_s=0.5, backoff_s=0.01)
        with pytest.raises(ServiceError):
            client.models()
    assert len(script.seen) == 3


def test_generate_counts_its_attempts_and_other_errors_are_not_retried():
    answer = {"images": [{"seed": 4, "data": ""}], "model": {"name": "m", "version": "3"}, "batch_size": 1}
    script = Script([busy("0"), busy("nan"), (200, {}, answer)])
    with server(script) as url:
        result = BackdropClient(url, KEY, max_retries=4, backoff_s=0.01).generate(b"png", category="mug", seed=4)
        assert result.attempts == 3 and result.seeds == [4] and result.version == "3"
        assert all(s["method"] == "POST" and s["headers"]["X-API-Key"] == KEY for s in script.seen)

        refused = Script([(422, {"Retry-After": "0"}, {"error": {"code": "unknown_category", "message": "no"}})])
        with server(refused) as other:
            with pytest.raises(ServiceError) as e:
                BackdropClient(other, KEY, max_retries=4, backoff_s=0.01).generate(b"png", category="sofa")
        assert e.value.status == 422 and len(refused.seen) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_key_never_follows_a_redirect_to_another_origin(status):
    """Another port (another origin on the same host) and another host name: neither sees the key."""
    for other_host in ("127.0.0.1", "localhost"):
        elsewhere = Script([OK])
        with server(elsewhere, other_host) as other:
            first = Script([(status, {"Location": f"{other}/v1/models"}, b"")])
            with server(first) as url:
                assert BackdropClient(url, KEY).models() == MODELS
        assert first.seen[0]["headers"]["X-API-Key"] == KEY
        assert len(elsewhere.seen) == 1
        sent = {k.lower() for k in elsewhere.seen[0]["headers"]}
        assert "x-api-key" not in sent and "authorization" not in sent, elsewhere.seen[0]["headers"]


def test_the_key_follows_a_redirect_within_its_origin():
    script = Script([(307, {"Location": "/v1/models-moved"}, b""), OK])
    with server(script) as url:
        assert BackdropClient(url, KEY).models() == MODELS
    assert [s["path"] for s in script.seen] == ["/v1/models", "/v1/models-moved"]
    assert all(s["headers"].get("X-API-Key") == KEY for s in script.seen)


def test_a_given_session_gets_the_same_protection():
    import requests

    session = requests.Session()
    elsewhere = Script([OK])
    with server(elsewhere) as other:
        first = Script([busy("0"), (302, {"Location": f"{other}/x"}, b"")])
        with server(first) as url:
            assert BackdropClient(url, KEY, session=session, backoff_s=0.01).models() == MODELS
    assert len(first.seen) == 2  # the 503 was retried through the mounted adapter
    assert "x-api-key" not in {k.lower() for k in elsewhere.seen[0]["headers"]}
