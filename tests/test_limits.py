"""Limits checked before work, on a real coordinator (gRPC and HTTP on loopback): a prompt too
long for any context is refused before it reaches the tokenizer while another stream runs
on unharmed; past --max-concurrent-requests a request gets RESOURCE_EXHAUSTED / 429 with
Retry-After while the running ones complete; over-long stop strings are refused."""

import http.client
import json
import threading

import grpc
import pytest

from coordinator.client import generate
from specdec.v1 import generator_pb2, generator_pb2_grpc
from stack import coordinator_behind_proxies, wait_until

HUGE = 50 * 2**20  # characters: a 50 MB prompt


@pytest.fixture(scope="module")
def limited(loop, stacks):
    """A coordinator with --max-concurrent-requests 2 and the HTTP API, on a shared stack's
    services; the texts its tokenizer is handed are recorded."""
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack, http_port=0, max_concurrent_requests=2) \
            as (proxies, coordinator):
        prompts = coordinator.core.prompts
        encode, seen = prompts._encode, []
        prompts._encode = lambda text, special: (seen.append(len(text)), encode(text, special))[1]
        yield stack, proxies, coordinator, seen


def request(prompt: str = "def", max_new: int = 40, **fields) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=2, **fields)


def post(port: int, body: dict) -> tuple[int, dict, dict]:
    """POST a completion (to the served model) to the HTTP API: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.request("POST", "/v1/completions", json.dumps({"model": model, **body}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())
    finally:
        conn.close()


class Streams:
    """Streams started on threads; each holds its first token before start() returns."""

    def __init__(self, addr: str, n: int):
        self.results: list = [None] * n
        self.first = [threading.Event() for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(addr, i)) for i in range(n)]
        for t in self.threads:
            t.start()
        for e in self.first:
            assert e.wait(60), "a stream did not start"

    def _run(self, addr: str, i: int) -> None:
        ids = []
        with grpc.insecure_channel(addr) as ch:
            for msg in generator_pb2_grpc.GeneratorStub(ch).Generate(request(), timeout=120):
                if msg.HasField("token"):
                    ids.append(msg.token.id)
                    self.first[i].set()
        self.results[i] = ids

    def join(self) -> list:
        for t in self.threads:
            t.join(120)
        return self.results


def test_a_huge_prompt_is_refused_before_tokenizing_while_a_stream_runs(limited):
    stack, proxies, coordinator, seen = limited
    reference, _, _ = generate(stack.addr, request(), timeout_s=60)
    addr = f"127.0.0.1:{coordinator.port}"
    proxies["target"].delay_s = 0.005  # (so the stream is still running meanwhile)
    try:
        running = Streams(addr, 1)
        huge = "x" * HUGE
        with pytest.raises(grpc.RpcError) as e:
            generate(addr, request(huge), timeout_s=60)
        status, _, body = post(coordinator.http_port, {"prompt": huge, "max_tokens": 4})
        assert running.join() == [reference]
    finally:
        proxies["target"].delay_s = 0
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "characters" in e.value.details() and "context" in e.value.details()
    assert status == 400 and "characters" in body["error"]["message"], body
    assert seen and max(seen) < 1000  # only the small prompts ever reached the tokenizer


def test_past_max_concurrent_requests_a_request_waits_its_turn_elsewhere(limited):
    stack, proxies, coordinator, _ = limited
    reference, _, _ = generate(stack.addr, request(), timeout_s=60)
    addr = f"127.0.0.1:{coordinator.port}"
    proxies["target"].delay_s = 0.01
    try:
        running = Streams(addr, 2)
        with pytest.raises(grpc.RpcError) as e:
            generate(addr, request(max_new=4), timeout_s=60)
        status, headers, body = post(coordinator.http_port, {"prompt": "def", "max_tokens": 4})
        assert running.join() == [reference, reference]
    finally:
        proxies["target"].delay_s = 0
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-concurrent-requests 2" in e.value.details()
    assert status == 429 and headers.get("retry-after") == "1", (status, body)
    assert "--max-concurrent-requests" in body["error"]["message"]
    # once the two have ended, a new request runs again
    assert wait_until(lambda: coordinator.core.running == 0, timeout=30)
    assert generate(addr, request(), timeout_s=60)[0] == reference


def test_an_over_long_stop_string_is_refused(limited):
    _, _, coordinator, _ = limited
    with pytest.raises(grpc.RpcError) as e:
        generate(f"127.0.0.1:{coordinator.port}", request(stop=["x" * 257]), timeout_s=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256 characters" in e.value.details()


def test_past_max_request_bytes_requests_are_refused_before_they_are_parsed(loop, stacks):
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack, http_port=0, max_request_bytes=2**20) \
            as (_, coordinator):
        big = "x" * (2 * 2**20)
        with pytest.raises(grpc.RpcError) as e:
            generate(f"127.0.0.1:{coordinator.port}", request(big), timeout_s=30)
        status, _, body = post(coordinator.http_port, {"prompt": big, "max_tokens": 4})
        small = post(coordinator.http_port, {"prompt": "def", "max_tokens": 4})
        # (just past the limit: the rest fits the socket buffers, so sending never breaks)
        chunked = post_chunked(coordinator.http_port, b"x" * (2**20 + 65536))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status == 413 and "--max-request-bytes" in body["error"]["message"], body
    assert small[0] == 200
    assert chunked == 413  # no Content-Length: counted as it arrives


def post_chunked(port: int, body: bytes) -> int:
    """POST `body` with chunked transfer encoding (no Content-Length); the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/completions", (body[i:i + 65536]
                                                 for i in range(0, len(body), 65536)),
                     {"Content-Type": "application/json"}, encode_chunked=True)
        return conn.getresponse().status
    finally:
        conn.close()
