"""TLS on every link, with certificates made here by a test CA (trustme): a coordinator
serving TLS (gRPC and HTTPS) in front of draft and target services that ask for client
certificates (mutual TLS). Output equals the plaintext stack's token for token; clients
without the CA, plaintext clients and a coordinator without a client certificate are refused;
the draft lost and the target restarted mid-stream still end exact."""

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx2 as httpx
import openai
import pytest
import trustme

import draft_service.servicer as draft_server
import target_service.servicer as target_server
from coordinator import server as coordinator_server
from coordinator.client import generate
from processes import start_services
from specdec.errors import Unavailable
from specdec.v1 import generator_pb2, generator_pb2_grpc
from stack import coordinator_config, service_config, stream_with_faults


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("coordinator.specdec.test")
    paths = Pki(*(d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                  "client.key", "other-ca.pem")))
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    for cert, pem, key in ((server, paths.server_cert, paths.server_key),
                           (client, paths.client_cert, paths.client_key)):
        pem.write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
    return paths


def mtls_service(pki: Pki, **overrides) -> dict:
    return dict(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
                tls_client_ca_file=str(pki.ca), **overrides)


class TlsStack:
    """Draft and target asking for client certificates; a coordinator with its own and TLS
    on its APIs."""

    def __init__(self, loop, lms, pki: Pki):
        self.loop, self.lms, self.pki = loop, lms, pki
        self.draft = loop.run(draft_server.start(
            service_config(model=lms["draft_perturbed"].name, **mtls_service(pki)),
            lms["draft_perturbed"]))
        self.target = self.start_target(0)
        self.coordinator = loop.run(coordinator_server.start(self.coordinator_config()))

    def start_target(self, port: int):
        return self.loop.run(target_server.start(
            service_config(model=self.lms["target"].name, port=port, **mtls_service(self.pki)),
            self.lms["target"]))

    def coordinator_config(self, client_cert: bool = True, **overrides):
        p = self.pki
        mtls = dict(upstream_cert_file=str(p.client_cert),
                    upstream_key_file=str(p.client_key)) if client_cert else {}
        return coordinator_config(self.draft[0].port, self.target[0].port, http_port=0,
                                  tls_cert_file=str(p.server_cert),
                                  tls_key_file=str(p.server_key),
                                  upstream_ca_file=str(p.ca), **mtls, **overrides)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    def stream(self, req, on_token=None, ca: Path | None = None, addr: str = "") -> list[int]:
        creds = grpc.ssl_channel_credentials(Path(ca or self.pki.ca).read_bytes())
        ids = []
        with grpc.secure_channel(addr or self.addr, creds) as ch:
            for msg in generator_pb2_grpc.GeneratorStub(ch).Generate(req, timeout=60):
                if msg.HasField("token"):
                    ids.append(msg.token.id)
                    if on_token:
                        on_token(len(ids))
        return ids

    def stop(self):
        self.loop.run(self.coordinator.stop(0))
        for server, _ in (self.draft, self.target):
            self.loop.run(server.stop(0))


@pytest.fixture(scope="module")
def tls(loop, lms, pki):
    s = TlsStack(loop, lms, pki)
    yield s
    s.stop()


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def request(prompt="def", k=3, max_new=40) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k)


@pytest.fixture(scope="module")
def reference(stacks):
    """Target-only output (ids, text) through a plaintext stack of the same models."""
    plain = stacks("draft_perturbed")
    return {p: generate(plain.addr, request(p, k=0), timeout_s=60)[:2] for p in ("def", "class")}


def test_greedy_over_mutual_tls_equals_plaintext(tls, reference):
    for k in (0, 3):
        assert tls.stream(request("def", k=k)) == reference["def"][0], k


def test_https_api_with_the_ca_works_and_without_it_fails(tls, reference):
    base = f"https://127.0.0.1:{tls.coordinator.http_port}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0,
                           http_client=httpx.Client(verify=trusting(tls.pki.ca), timeout=60))
    try:
        model = client.models.list().data[0].id
        out = client.completions.create(model=model, prompt="def", max_tokens=40,
                                        temperature=0, extra_body={"num_speculative_tokens": 3})
    finally:
        client.close()
    assert out.choices[0].text == reference["def"][1]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/models", verify=trusting(tls.pki.other_ca), timeout=10)
    with pytest.raises(httpx.HTTPError):  # plaintext HTTP to the HTTPS port
        httpx.get(f"http://127.0.0.1:{tls.coordinator.http_port}/v1/models", timeout=10)


def test_clients_without_the_ca_or_without_tls_are_refused(tls):
    with pytest.raises(grpc.RpcError) as e:
        tls.stream(request(), ca=tls.pki.other_ca)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as e:  # plaintext against the TLS port
        generate(tls.addr, request(), timeout_s=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_coordinator_without_a_client_certificate_is_refused_by_the_services(tls):
    with pytest.raises(Unavailable, match="not SERVING"):
        tls.loop.run(coordinator_server.start(tls.coordinator_config(
            client_cert=False, connect_timeout_s=3.0)))


def test_the_services_certificate_name_can_differ_from_the_address_dialled(tls, reference):
    """Replicas are dialled by address (dns:/// resolves them): --upstream-tls-server-name
    names what their certificates carry (this one: 127.0.0.1 and localhost)."""
    coordinator = tls.loop.run(coordinator_server.start(tls.coordinator_config(
        upstream_tls_server_name="localhost")))
    try:
        ids = tls.stream(request("def", k=3), addr=f"127.0.0.1:{coordinator.port}")
    finally:
        tls.loop.run(coordinator.stop(0))
    assert ids == reference["def"][0]
    with pytest.raises(Unavailable, match="not SERVING"):
        tls.loop.run(coordinator_server.start(tls.coordinator_config(
            upstream_tls_server_name="someone-else.example", connect_timeout_s=3.0)))


def test_draft_lost_and_target_restarted_mid_stream_over_mtls(tls, reference):
    """Last: it leaves the stack without a draft."""
    # the draft server goes away at token 3: target-only rounds, same output
    ids = tls.stream(request("def", k=3, max_new=40), on_token=lambda n: n == 3 and tls.loop.run(
        tls.draft[0].stop(0)))
    assert ids == reference["def"][0]
    # the target restarts on its port at token 3: the session is re-opened from the history
    port = tls.target[0].port
    restarted = threading.Event()

    def restart(n):
        if n == 3:
            tls.loop.run(tls.target[0].stop(0))
            tls.target = tls.start_target(port)
            restarted.set()
    ids = tls.stream(request("class", k=0, max_new=40), on_token=restart)
    assert restarted.is_set() and ids == reference["class"][0]


@pytest.fixture(scope="module")
def tls_processes(model_dirs, pki, tmp_path_factory):
    """Draft, target and coordinator as real processes, every link mutual TLS (the flags as
    SPECDEC_* variables), the model links through delay proxies (TLS passes through them)."""
    env = {"SPECDEC_THREADS": "1", "SPECDEC_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
           "SPECDEC_TLS_CERT_FILE": str(pki.server_cert),
           "SPECDEC_TLS_KEY_FILE": str(pki.server_key),
           "SPECDEC_TLS_CLIENT_CA_FILE": str(pki.ca),  # (read by draft and target)
           "SPECDEC_UPSTREAM_CA_FILE": str(pki.ca),  # (read by the coordinator)
           "SPECDEC_UPSTREAM_CERT_FILE": str(pki.client_cert),
           "SPECDEC_UPSTREAM_KEY_FILE": str(pki.client_key)}
    s = start_services(model_dirs, tmp_path_factory.mktemp("tls-logs"), env,
                       "--draft-timeout-ms", "300")
    yield s
    s.stop()


def faulted_stream(addr: str, ca: Path, req, faults: dict) -> tuple[list[int], object]:
    """stack.stream_with_faults over TLS, trusting `ca`."""
    return stream_with_faults(addr, req, faults,
                              credentials=grpc.ssl_channel_credentials(ca.read_bytes()))


def test_processes_killed_over_mtls_still_end_exact(tls_processes, pki):
    """The fault tests' draft kill (-9) and target kill-and-restart, over mutual TLS."""
    s = tls_processes
    reference, _ = faulted_stream(s.addr, pki.ca, request("def", k=0, max_new=60), {})
    s.proxies["target"].delay_s = 0.01  # (so the stream outlasts the faults)
    try:
        ids, stats = faulted_stream(s.addr, pki.ca, request("def", k=3, max_new=60),
                                    {3: lambda: s.processes["draft"].proc.kill()})
        assert ids == reference and stats.draft_fallback_reason == "unavailable"
        port, restarted = s.processes["target"].port, threading.Event()

        def kill_and_restart():
            s.processes["target"].proc.kill()
            threading.Thread(target=lambda: (s.start_model("target", port), restarted.set()),
                             daemon=True).start()
        ids, stats = faulted_stream(s.addr, pki.ca, request("def", k=0, max_new=60),
                                    {3: kill_and_restart})
    finally:
        s.proxies["target"].delay_s = 0
    assert restarted.wait(60)
    assert ids == reference and stats.target_reopens >= 1
