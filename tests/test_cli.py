"""The real entry points as separate processes: `python -m draft_service`, `target_service`,
`coordinator` and `coordinator.client`, configured by flags and environment variables."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def spawn(args, env_extra=None):
    """Start a service with JSON logs on port 0; returns (process, bound port)."""
    env = {**os.environ, "SPECDEC_LOG_FORMAT": "json", "SPECDEC_PORT": "0",
           "SPECDEC_THREADS": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "serving":
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, event["port"]
    raise AssertionError(f"{args[0]} exited before serving:\n{''.join(lines)}")


@pytest.fixture(scope="module")
def processes(model_dirs, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cli-cache"))
    procs = []
    try:
        draft, draft_port = spawn(["draft_service", "--model", str(model_dirs["draft_perturbed"])],
                                  {"SPECDEC_CACHE_DIR": cache})
        procs.append(draft)
        target, target_port = spawn(["target_service", "--cache-dir", cache],
                                    {"SPECDEC_MODEL": str(model_dirs["target"])})
        procs.append(target)
        coord, port = spawn(["coordinator", "--draft", f"127.0.0.1:{draft_port}",
                             "--target", f"127.0.0.1:{target_port}", "--cache-dir", cache])
        procs.append(coord)
        yield procs, port
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def client(port, *args):
    out = subprocess.run([sys.executable, "-m", "coordinator.client", "--addr",
                          f"127.0.0.1:{port}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    return out


def test_client_streams_text_and_stats_and_k0_matches(processes):
    _, port = processes
    runs = {}
    for k in ("3", "0"):
        out = client(port, "--k", k, "--max-new-tokens", "12", "--json", "def add(a, b):")
        assert out.returncode == 0, out.stderr
        text, stats_line = out.stdout.rsplit("\n", 2)[:2]  # text, newline, JSON stats line
        stats = json.loads(stats_line)
        assert stats["generated_tokens"] == 12
        assert stats["finish_reason"] == "FINISH_REASON_LENGTH"
        runs[k] = (text, stats)
    assert runs["3"][0] == runs["0"][0]
    assert runs["3"][1]["proposed_draft_tokens"] > 0 and runs["0"][1]["rounds"] == 12


def test_client_reports_bad_input_with_status(processes):
    _, port = processes
    out = client(port, "--max-new-tokens", "0", "hello")
    assert out.returncode == 1
    assert "INVALID_ARGUMENT: max_new_tokens must be in [1, 4096]" in out.stderr


def test_sigterm_shuts_every_process_down_cleanly(processes):
    procs, _ = processes
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
