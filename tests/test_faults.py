"""Faults with real processes on loopback: services killed (-9), restarted, slowed down and
cut off mid-stream; clients that cancel. Every stream either completes with exactly the
target's output or ends promptly with a clear status, and no session leaks."""

import os
import signal
import threading
import time

import grpc
import pytest

from coordinator.client import generate as client_generate
from processes import start_services
from specdec.v1 import generator_pb2, generator_pb2_grpc
from tiny_models import PROMPTS


def request(prompt="def", k=4, max_new=150, **fields):
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k, **fields)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def services(model_dirs, tmp_path_factory):
    env = {"SPECDEC_THREADS": "1",
           "SPECDEC_CACHE_DIR": str(tmp_path_factory.mktemp("fault-cache"))}
    s = start_services(model_dirs, tmp_path_factory.mktemp("fault-logs"), env,
                       "--draft-timeout-ms", "300", "--shutdown-grace-s", "20")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(services):
    """Target-only output (K=0 through the same services) of the prompts used here."""
    return {p: client_generate(services.addr, request(p, k=0), timeout_s=60)[0]
            for p in ("def", "class")}


def stream_with_fault(services, req, fault, after_tokens=3, timeout_s=90):
    """Start a stream, read a few tokens, inject `fault()`, read the rest."""
    with grpc.insecure_channel(services.addr) as ch:
        call = generator_pb2_grpc.GeneratorStub(ch).Generate(req, timeout=timeout_s)
        ids, stats = [], None
        for msg in call:
            if msg.HasField("token"):
                ids.append(msg.token.id)
                if len(ids) == after_tokens:
                    fault()
            else:
                stats = msg.stats
    return ids, stats


def slow_target(services, delay_s=0.01):
    """Slow the target's link so a stream lasts long enough to be hit mid-way."""
    services.proxies["target"].delay_s = delay_s


def test_draft_killed_mid_stream_completes_target_only_and_identical(services, reference):
    slow_target(services)
    try:
        ids, stats = stream_with_fault(services, request("def"),
                                       lambda: services.processes["draft"].proc.kill())
    finally:
        slow_target(services, 0)
    assert ids == reference["def"]
    assert stats.draft_fallback_rounds > 0 and stats.draft_fallback_reason == "unavailable"
    assert stats.proposed_draft_tokens > 0  # it did speculate before the fault
    # The draft comes back (on a new port, behind the same proxy): speculation resumes.
    services.proxies["draft"].upstream_port = services.start_model("draft").port
    runs = []

    def speculates_again():
        runs.append(client_generate(services.addr, request("def"), timeout_s=60))
        return runs[-1][2]["draft_fallback_rounds"] == 0

    assert wait_until(speculates_again, timeout=15)
    assert all(ids == reference["def"] for ids, _, _ in runs)


def test_target_killed_and_restarted_on_the_same_port_completes_identical(services, reference):
    port = services.processes["target"].port
    restarted = threading.Event()

    def kill_and_restart():
        services.processes["target"].proc.kill()
        threading.Thread(target=lambda: (services.start_model("target", port),
                                         restarted.set()), daemon=True).start()

    slow_target(services)
    try:
        ids, stats = stream_with_fault(services, request("class"), kill_and_restart)
    finally:
        slow_target(services, 0)
    assert restarted.wait(60)
    assert ids == reference["class"]
    assert stats.target_reopens >= 1
    assert services.live_sessions("target") == 0


def test_target_that_never_comes_back_gives_unavailable_within_the_deadline(services):
    services.processes["target"].proc.kill()
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            client_generate(services.addr, request("def"), timeout_s=4)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert "target service at" in e.value.details()
        assert time.monotonic() - started < 4.5
    finally:
        services.proxies["target"].upstream_port = services.start_model("target").port


def test_slow_draft_costs_rounds_not_waiting(services, reference):
    gaps, last = [], None
    draft_proxy = services.proxies["draft"]
    slow_target(services)  # so the stream outlasts the draft's first timeouts
    try:
        with grpc.insecure_channel(services.addr) as ch:
            call = generator_pb2_grpc.GeneratorStub(ch).Generate(request("def"), timeout=60)
            ids, stats = [], None
            for msg in call:
                now = time.monotonic()
                if msg.HasField("token"):
                    ids.append(msg.token.id)
                    if len(ids) == 2:
                        draft_proxy.delay_s = 3.0  # the draft now answers after ~6 s
                    elif len(ids) > 2:
                        gaps.append(now - last)
                    last = now
                else:
                    stats = msg.stats
    finally:
        draft_proxy.delay_s = 0
        slow_target(services, 0)
    assert ids == reference["def"]
    assert stats.draft_fallback_reason == "timeout"
    # --draft-timeout-ms 300: no token waited much longer than one Propose budget
    assert max(gaps) < 1.0, max(gaps)
    draft_proxy.cut()  # drop the connections still holding the slow calls


def test_fifty_cancelled_streams_leave_no_session(services):
    slow_target(services)
    try:
        with grpc.insecure_channel(services.addr) as ch:
            stub = generator_pb2_grpc.GeneratorStub(ch)
            calls = [stub.Generate(request(PROMPTS[i % len(PROMPTS)], k=i % 5, max_new=60),
                                   timeout=60)
                     for i in range(50)]
            for call in calls:
                next(call)  # each is running
            for call in calls:
                call.cancel()
            cancelled = time.monotonic()
            assert wait_until(lambda: services.live_sessions("draft") == 0
                              and services.live_sessions("target") == 0, timeout=2.0), \
                (services.live_sessions("draft"), services.live_sessions("target"))
            assert time.monotonic() - cancelled < 2.0
    finally:
        slow_target(services, 0)


def test_sigterm_drains_the_coordinator(services, reference):
    """Last: it stops the coordinator (and then the services, the same way)."""
    slow_target(services, 0.02)
    coordinator = services.processes["coordinator"].proc
    with grpc.insecure_channel(services.addr) as ch:
        call = generator_pb2_grpc.GeneratorStub(ch).Generate(request("def", k=0), timeout=60)
        ids = [next(call).token.id]
        coordinator.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as e:
            client_generate(services.addr, request("class", max_new=4), timeout_s=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        for msg in call:
            if msg.HasField("token"):
                ids.append(msg.token.id)
    assert ids == reference["def"]
    assert coordinator.wait(30) == 0
    for role in ("draft", "target"):
        proc = services.processes[role].proc
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
