"""Scale-out with real processes on loopback: 2 draft replicas, target replicas behind a DNS
name (a tiny DNS server plays the Kubernetes headless Service: one A record per replica,
replicas on 127.0.0.x sharing one port), and 2 coordinators (one lockstep, one pipelined).

The tests run in order on one cluster: requests spread over the target replicas, a target
replica is killed mid-run, a new one (and a mismatched one) appear in DNS, a draft replica
is drained mid-run. Every stream must equal the target's solo K=0 output."""

import signal
import threading

import grpc
import pytest
from dnsserver import TinyDNS

from coordinator.client import generate as client_generate
from processes import free_port, metric
from specdec.launch import spawn, wait_serving
from specdec.v1 import generator_pb2, generator_pb2_grpc
from stack import wait_until
from tiny_models import PROMPTS

pytestmark = pytest.mark.timeout(600)

NAME = "targets.specdec.test"
REQUESTS = 16
MAX_NEW = 150


class Cluster:
    def __init__(self, model_dirs, logs, env):
        self.model_dirs, self.logs, self.env = model_dirs, logs, env
        self.dns = TinyDNS()
        self.dns.records[NAME] = []
        self.port = free_port("127.0.0.2")  # every target replica's port (as in a pod)
        self.drafts, self.targets, self.coordinators = [], {}, []

    def spawn_target(self, ip: str, model: str = "target"):
        p = spawn(f"target-{ip}", "target_service",
                  ["--model", str(self.model_dirs[model]), "--host", ip, "--port",
                   str(self.port), "--metrics-port", "0"], self.logs, self.env)
        self.targets[ip] = p
        return p

    def start(self):
        drafts = [spawn(f"draft-{i}", "draft_service",
                        ["--model", str(self.model_dirs["draft_perturbed"]), "--port", "0",
                         "--metrics-port", "0", "--shutdown-grace-s", "30"], self.logs, self.env)
                  for i in range(2)]
        targets = [self.spawn_target(ip) for ip in ("127.0.0.2", "127.0.0.3")]
        for p in drafts + targets:
            wait_serving(p, 120)
        self.drafts = drafts
        self.dns.records[NAME] = ["127.0.0.2", "127.0.0.3"]
        draft_addrs = ",".join(f"127.0.0.1:{p.port}" for p in drafts)
        for i, schedule in enumerate(("lockstep", "pipelined")):
            self.coordinators.append(spawn(
                f"coordinator-{i}", "coordinator",
                ["--draft", draft_addrs, "--target", f"dns://{self.dns.addr}/{NAME}:{self.port}",
                 "--resolve-interval-s", "0.5", "--schedule", schedule, "--port", "0",
                 "--metrics-port", "0", "--draft-timeout-ms", "2000", "--adaptive-k", "0"],
                self.logs, self.env))
        for p in self.coordinators:
            wait_serving(p, 120)

    def opened(self, ip: str) -> float:
        return metric(self.targets[ip].metrics_port, "specdec_sessions_opened_total", ip)

    def stop(self):
        for p in [*self.coordinators, *self.drafts, *self.targets.values()]:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        self.dns.close()


@pytest.fixture(scope="module")
def cluster(model_dirs, tmp_path_factory):
    env = {"SPECDEC_THREADS": "1",
           "SPECDEC_CACHE_DIR": str(tmp_path_factory.mktemp("scale-cache"))}
    c = Cluster(model_dirs, tmp_path_factory.mktemp("scale-logs"), env)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def request(prompt: str, k: int = 4) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW,
                                         num_speculative_tokens=k)


@pytest.fixture(scope="module")
def reference(cluster):
    """REQUESTS (prompt, target-only output generated alone with K=0), from prompts whose
    output runs long (a fault must hit streams mid-run), repeated as needed."""
    addr = f"127.0.0.1:{cluster.coordinators[0].port}"
    long = []
    for prompt in PROMPTS[:12]:  # (short prompts: prompt + MAX_NEW fits the context)
        ids = client_generate(addr, request(prompt, k=0), timeout_s=120)[0]
        if len(ids) >= MAX_NEW // 2:
            long.append((prompt, ids))
    assert len(long) >= 3, "the tiny target ends most prompts early; pick other prompts"
    return [long[i % len(long)] for i in range(REQUESTS)]


def run_concurrently(cluster, reference, fault=None, after_each: int = 3):
    """The reference's requests, concurrently, alternating between the coordinators; each
    must equal its reference output. `fault()` runs once every stream has streamed
    `after_each` tokens (or ended): by order, not time, so a slow machine that starts the
    streams far apart still hits them mid-run. Returns [(ids, stats, tokens it had streamed
    before the fault)]."""
    results: list = [None] * REQUESTS
    streamed, lock, fired = [0] * REQUESTS, threading.Lock(), threading.Event()
    at_fault = [0] * REQUESTS

    def reached(i: int, ended: bool = False) -> bool:
        """Stream i streamed one more token (or ended): is it the fault's turn now?"""
        with lock:
            streamed[i] = after_each if ended else streamed[i] + 1
            due = fault is not None and not fired.is_set() and min(streamed) >= after_each
            if due:
                fired.set()  # (under the lock: exactly one stream fires it)
            return due

    def one(i):
        addr = f"127.0.0.1:{cluster.coordinators[i % 2].port}"
        ids, stats = [], None
        with grpc.insecure_channel(addr) as ch:
            req = request(reference[i][0])
            for msg in generator_pb2_grpc.GeneratorStub(ch).Generate(req, timeout=300):
                if msg.HasField("token"):
                    ids.append(msg.token.id)
                    if not fired.is_set():
                        at_fault[i] = len(ids)
                    if reached(i):
                        fault()
                else:
                    stats = msg.stats
        if reached(i, ended=True):
            fault()
        results[i] = (ids, stats)

    errors = []

    def guarded(i):
        try:
            one(i)
        except Exception as e:  # reported below with the request it belongs to
            errors.append((i, e))

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (ids, _) in enumerate(results):
        assert ids == reference[i][1], f"request {i} differs from its target-only output"
    return [(ids, stats, at_fault[i]) for i, (ids, stats) in enumerate(results)]


def log_events(p, event: str) -> int:
    return p.log_path.read_text().count(f'"event": "{event}"')


def test_sessions_spread_over_target_replicas_and_outputs_equal_target_only(cluster,
                                                                             reference):
    before = {ip: cluster.opened(ip) for ip in cluster.targets}
    results = run_concurrently(cluster, reference)
    assert sum(stats.accepted_draft_tokens for _, stats, _ in results) > 0  # speculation ran
    opened = {ip: cluster.opened(ip) - before[ip] for ip in cluster.targets}
    print(f"\nsessions opened per target replica: {opened}")
    assert all(n >= 3 for n in opened.values()), opened  # both replicas got sessions
    assert sum(opened.values()) >= REQUESTS


def test_target_replica_killed_mid_run_its_sessions_move_and_match(cluster, reference):
    victim = cluster.targets["127.0.0.2"]
    results = run_concurrently(cluster, reference, fault=victim.proc.kill)
    moved = sum(stats.target_reopens for _, stats, _ in results)
    mid_run = sum(0 < at < len(ids) for ids, _, at in results)
    print(f"\nkill -9 of a target replica: {mid_run}/{REQUESTS} streams mid-run, {moved} "
          f"target sessions re-opened on the other replica, all outputs equal")
    assert victim.proc.wait(30) == -signal.SIGKILL
    assert mid_run >= 4, "the kill came too late to hit streams mid-run"
    assert moved >= 1, "no session was re-opened on the other replica"


def test_new_replica_in_dns_gets_later_sessions_and_mismatched_one_is_refused(cluster,
                                                                           reference):
    new = cluster.spawn_target("127.0.0.4")
    wrong = cluster.spawn_target("127.0.0.5", model="draft_unrelated")  # same tokenizer
    wait_serving(new, 120)
    wait_serving(wrong, 120)
    cluster.dns.records[NAME] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]

    def seen():
        ports = [c.metrics_port for c in cluster.coordinators]
        return all(metric(p, "specdec_upstream_replicas", service="target", state="serving") == 2
                   and metric(p, "specdec_upstream_replicas", service="target",
                              state="mismatched") == 1 for p in ports)
    assert wait_until(seen, timeout=60), "the coordinators did not pick up the DNS change"
    for c in cluster.coordinators:
        assert log_events(c, "replica refused: it does not serve the tier's model; the others "
                             "keep serving") == 1
    before = cluster.opened("127.0.0.4")
    run_concurrently(cluster, reference)
    print(f"\nnew replica: {cluster.opened('127.0.0.4') - before} of {REQUESTS} sessions")
    assert cluster.opened("127.0.0.4") - before >= 3  # the new replica takes its share
    assert cluster.opened("127.0.0.5") == 0  # the mismatched one never gets a session


def test_draft_replica_drained_mid_run_sessions_continue(cluster, reference):
    victim = cluster.drafts[0]
    results = run_concurrently(cluster, reference,
                               fault=lambda: victim.proc.send_signal(signal.SIGTERM))
    assert victim.proc.wait(60) == 0  # it drained: its sessions moved or finished, then exit
    moves = sum(log_events(c, "draft replica drains; moving the session")
                for c in cluster.coordinators)
    reopened = sum(stats.draft_reopens for _, stats, _ in results)
    print(f"\nSIGTERM of a draft replica: {moves} sessions moved off it, {reopened} draft "
          f"sessions re-opened, 0 failed, all outputs equal")
    assert moves >= 1 and reopened >= 1, (moves, reopened)
