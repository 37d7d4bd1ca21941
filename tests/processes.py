"""The three services as real processes on loopback (tiny models), with a fault-injecting
proxy in front of each model service, for tests that kill, restart and slow them down."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.delayproxy import DelayProxy
from specdec.launch import Process, spawn, wait_serving
from specdec.v1 import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """GET /metrics; returns {'name{labels}': value} for every sample."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def metric(port: int, name: str, host: str = "127.0.0.1", **labels) -> float:
    """One sample of a process's /metrics (0 if absent; labels as the exposition sorts them)."""
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                  if labels else "")
    return scrape(port, host).get(key, 0.0)


@dataclass
class Services:
    model_dirs: dict
    logs: Path
    env: dict
    processes: dict[str, Process] = field(default_factory=dict)
    proxies: dict[str, DelayProxy] = field(default_factory=dict)
    restarts: int = 0

    def start_model(self, role: str, port: int = 0) -> Process:
        model = self.model_dirs["draft_perturbed" if role == "draft" else "target"]
        self.restarts += 1
        p = spawn(f"{role}-{self.restarts}", f"{role}_service",
                  ["--model", str(model), "--port", str(port), "--metrics-port", "0"],
                  self.logs, self.env)
        wait_serving(p, 120)
        self.processes[role] = p
        return p

    def start_coordinator(self, *args: str) -> Process:
        p = spawn("coordinator", "coordinator",
                  ["--draft", self.proxies["draft"].addr, "--target", self.proxies["target"].addr,
                   "--port", "0", "--metrics-port", "0", "--adaptive-k", "0", *args],
                  self.logs, self.env)  # (K fixed unless asked: see stack.coordinator_config)
        wait_serving(p, 120)
        self.processes["coordinator"] = p
        return p

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.processes['coordinator'].port}"

    def live_sessions(self, role: str) -> int:
        """GetInfo's live_sessions of a model service (asked directly, not via the proxy)."""
        port = self.processes[role].port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            if role == "draft":
                info = draft_pb2_grpc.DraftServiceStub(ch).GetInfo(
                    draft_pb2.GetDraftInfoRequest(), timeout=10)
            else:
                info = target_pb2_grpc.TargetServiceStub(ch).GetInfo(
                    target_pb2.GetTargetInfoRequest(), timeout=10)
        return info.model.live_sessions

    def stop(self) -> None:
        for p in self.processes.values():
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        for proxy in self.proxies.values():
            proxy.close()


def start_services(model_dirs, logs: Path, env: dict, *coordinator_args: str) -> Services:
    s = Services(model_dirs, logs, env)
    try:
        for role in ("draft", "target"):
            s.proxies[role] = DelayProxy(s.start_model(role).port)
        s.start_coordinator(*coordinator_args)
    except BaseException:
        s.stop()
        raise
    return s
