"""The real entry points as separate processes: `python -m draft_service`, `target_service`,
`coordinator` and `coordinator.client`, configured by flags and environment variables."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.launch import spawn, wait_serving

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processes(model_dirs, tmp_path_factory):
    """Draft (model by flag), target (model by env var) and coordinator, each on port 0."""
    cache = str(tmp_path_factory.mktemp("cli-cache"))
    logs = tmp_path_factory.mktemp("cli-logs")
    env = {"SPECDEC_PORT": "0", "SPECDEC_THREADS": "1", "SPECDEC_CACHE_DIR": cache}
    procs = []
    try:
        draft_model = str(model_dirs["draft_perturbed"])
        procs.append(spawn("draft", "draft_service", ["--model", draft_model], logs, env))
        procs.append(spawn("target", "target_service", [], logs,
                           {**env, "SPECDEC_MODEL": str(model_dirs["target"])}))
        for p in procs:
            wait_serving(p, 120)
        procs.append(spawn("coordinator", "coordinator",
                           ["--draft", f"127.0.0.1:{procs[0].port}",
                            "--target", f"127.0.0.1:{procs[1].port}"], logs, env))
        wait_serving(procs[2], 120)
        yield [p.proc for p in procs], procs[2].port
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()


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
