"""API keys on a real coordinator (gRPC and HTTP on loopback): without the key or with a
wrong one, 401 / UNAUTHENTICATED before any work; with it, the same output as an open
coordinator; health checks stay open for probes."""

import http.client
import json

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.api.auth import ApiKeys, bearer
from coordinator.client import generate
from specdec.errors import InvalidArgument
from specdec.v1 import generator_pb2
from stack import coordinator_behind_proxies

KEYS = ("first-key", "second-key")


@pytest.fixture(scope="module")
def keyed(loop, stacks, tmp_path_factory):
    """A coordinator asking for KEYS (one from --api-key, one from --api-key-file, which also
    holds a comment and a blank line), /metrics asking too, on a shared stack's services."""
    key_file = tmp_path_factory.mktemp("keys") / "keys"
    key_file.write_text(f"# rotated 2026-12\n\n{KEYS[1]}\n")
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack, http_port=0, api_key=KEYS[0],
                                    api_key_file=str(key_file), metrics_require_key=True) \
            as (_, coordinator):
        yield stack, coordinator


def request(k: int = 2) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt="def", max_new_tokens=12,
                                         num_speculative_tokens=k)


def openai_client(port: int, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                         timeout=60)


def test_grpc_without_or_with_a_wrong_key_is_unauthenticated(keyed):
    _, coordinator = keyed
    addr = f"127.0.0.1:{coordinator.port}"
    for key in (None, "wrong-key", KEYS[0] + "x"):
        with pytest.raises(grpc.RpcError) as e:
            generate(addr, request(), timeout_s=30, api_key=key)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, key
        assert "Bearer" in e.value.details()
    assert coordinator.core.running == 0  # refused before any work


def test_grpc_with_either_key_equals_the_open_coordinator(keyed):
    stack, coordinator = keyed
    addr = f"127.0.0.1:{coordinator.port}"
    reference, _, _ = generate(stack.addr, request(), timeout_s=60)  # (no key asked there)
    for key in KEYS:
        ids, _, _ = generate(addr, request(), timeout_s=60, api_key=key)
        assert ids == reference


def test_health_stays_open_for_probes(keyed):
    _, coordinator = keyed
    with grpc.insecure_channel(f"127.0.0.1:{coordinator.port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    conn = http.client.HTTPConnection("127.0.0.1", coordinator.http_port, timeout=30)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


def test_http_without_or_with_a_wrong_key_gets_401_in_openai_shape(keyed):
    _, coordinator = keyed
    port = coordinator.http_port
    with pytest.raises(openai.AuthenticationError) as e:
        openai_client(port, "wrong-key").completions.create(model="m", prompt="def",
                                                           max_tokens=4)
    assert e.value.status_code == 401
    assert e.value.body["type"] == "authentication_error" and "Bearer" in e.value.body["message"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path in ("/v1/models", "/metrics"):  # no Authorization header at all
        conn.request("GET", path)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 401 and resp.getheader("WWW-Authenticate") == "Bearer", path
        assert body["error"]["code"] == 401, path
    conn.close()


def test_http_with_a_key_works_with_the_official_client(keyed):
    stack, coordinator = keyed
    reference, text, _ = generate(stack.addr, request(), timeout_s=60)
    client = openai_client(coordinator.http_port, KEYS[1])
    try:
        model = client.models.list().data[0].id
        out = client.completions.create(model=model, prompt="def", max_tokens=12,
                                        temperature=0,
                                        extra_body={"num_speculative_tokens": 2})
    finally:
        client.close()
    assert out.choices[0].text == text
    conn = http.client.HTTPConnection("127.0.0.1", coordinator.http_port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert conn.getresponse().status == 200
    conn.close()


def test_keys_load_and_compare():
    keys = ApiKeys.load(" a , b ,", "")
    assert keys.keys == (b"a", b"b") and keys.required
    assert keys.allows("a") and keys.allows("b")
    assert not keys.allows("ab") and not keys.allows("") and not keys.allows(None)
    assert ApiKeys().allows(None)  # no key configured: open
    assert bearer("Bearer  tok ") == "tok" and bearer("bearer tok") == "tok"
    assert bearer("Basic dXNlcg==") is None and bearer("Bearer") is None and bearer(None) is None
    with pytest.raises(ValueError, match="no key"):
        ApiKeys.load("", "/dev/null")
    with pytest.raises(ValueError, match="--api-key-file /nonexistent"):
        ApiKeys.load("", "/nonexistent/keys")


def test_a_missing_key_file_stops_the_coordinator_at_start(loop, stacks):
    stack = stacks("draft_perturbed")
    with pytest.raises(InvalidArgument, match="--api-key-file"):
        with coordinator_behind_proxies(loop, stack, api_key_file="/nonexistent/keys"):
            pass
