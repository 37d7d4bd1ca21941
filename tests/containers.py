"""A container engine and its compose tool, driven from tests: Docker with `docker compose`, or
Podman with podman-compose. tests/containers.sh chooses and sets them up, and passes the
choice in SPECDEC_CONTAINER_ENGINE / SPECDEC_COMPOSE (unset: the container tests skip)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shlex
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The build reads the wheels from this port on the host (a fixed one: the URL is a build
# argument, and a new value would invalidate the image's cached pip layers).
WHEELS_PORT = int(os.environ.get("SPECDEC_WHEELS_PORT", "18765"))


@dataclass
class Engine:
    cli: str  # "docker" or "podman"
    compose: list[str]  # the compose command: ["docker", "compose"] or [".../podman-compose"]
    project: str  # the compose project name, so a user's own `specdec` stack is left alone
    files: list[str] = field(default_factory=lambda: ["compose.yaml", "compose.cpu.yaml"])

    @classmethod
    def from_env(cls, project: str) -> Engine | None:
        cli = os.environ.get("SPECDEC_CONTAINER_ENGINE")
        compose = os.environ.get("SPECDEC_COMPOSE")
        return cls(cli, shlex.split(compose), project) if cli and compose else None

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run([self.cli, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            raise RuntimeError(f"{self.cli} {' '.join(args)}: exit {done.returncode}\n"
                               f"{done.stdout}\n{done.stderr}")
        return done.stdout.strip()

    def logs(self, cid: str) -> str:
        """A container's output, both streams (a process's stderr stays stderr here)."""
        done = subprocess.run([self.cli, "logs", cid], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        return done.stdout + done.stderr

    def compose_run(self, *args: str, env: dict[str, str], timeout: float = 300) -> str:
        files = [a for f in self.files for a in ("-f", f)]
        done = subprocess.run([*self.compose, "-p", self.project, *files, *args],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **env})
        if done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)}: exit {done.returncode}\n"
                               f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def build(self, tag: str, wheels_url: str, python_image: str | None) -> None:
        base = ["--build-arg", f"PYTHON_IMAGE={python_image}"] if python_image else []
        # Podman's default OCI format has no HEALTHCHECK: build Docker's format
        form = ["--format", "docker"] if self.cli == "podman" else []
        self.run("build", *form, "--network=host", "-f", "deploy/Dockerfile", "-t", tag,
                 "--build-arg", f"WHEELS={wheels_url}", *base, ".", timeout=1800)

    def label_filter(self, service: str | None = None) -> list[str]:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return [a for label in labels for a in ("--filter", f"label={label}")]

    def container(self, service: str) -> str:
        """The id of the service's one container (running or not)."""
        (cid,) = self.run("ps", "-a", "-q", *self.label_filter(service)).split()
        return cid

    def inspect(self, cid: str, template: str) -> str:
        return self.run("inspect", "--format", template, cid)

    def probe(self, cid: str, port: int) -> bool:
        """The image's own health check (specdec.healthprobe), run in the container now:
        Podman without systemd never runs HEALTHCHECKs on its own."""
        out = subprocess.run([self.cli, "exec", cid, "python", "-m", "specdec.healthprobe",
                              f"127.0.0.1:{port}"], capture_output=True, timeout=60)
        return out.returncode == 0

    def crash(self, cid: str, image: str) -> None:
        """SIGKILL the container's main process, as a crash would (`kill` through the engine
        counts as a manual stop, after which neither engine applies the restart policy)."""
        pid = int(self.inspect(cid, "{{.State.Pid}}"))
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:  # not root: a root container in the host's PID namespace
            self.run("run", "--rm", "--pid=host", "--user", "0", image, "python", "-c",
                     f"import os; os.kill({pid}, 9)")

    def leftovers(self) -> dict[str, str]:
        """The project's containers, volumes and networks that still exist."""
        left = {"containers": self.run("ps", "-a", "-q", *self.label_filter())}
        for kind in ("volume", "network"):
            names = self.run(kind, "ls", "-q", *self.label_filter()).split()
            left[kind + "s"] = " ".join(n for n in names if n != "podman")
        return {k: v for k, v in left.items() if v}


@contextlib.contextmanager
def serve_directory(path: Path, port: int):
    """Serve `path` read-only over HTTP on 127.0.0.1:port (pip --find-links for a build)."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
