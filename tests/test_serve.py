"""`python -m specdec serve`: the three processes from one command, reached with the official
openai client, stopped with SIGINT; a child that cannot start fails the command with its
error; every flag reaches the processes whose parsers have it."""

import json
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from specdec.serve import RoutingError, process_parsers, route
from tiny_models import PROMPTS

ROOT = Path(__file__).resolve().parent.parent
READY = "Ctrl-C stops all three."


def start_serve(draft: Path, target: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "specdec", "serve", "--draft", str(draft), "--target",
         str(target), "--http-port", "0", "--port", "0", "--draft-port", "0",
         "--target-port", "0", "--log-dir", str(tmp_path / "logs"), "--dtype", "float32",
         "--threads", "1", "--cache-dir", str(tmp_path / "cache"), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Output:
    """A process's output lines, read by one thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.queue = proc, [], queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(x) for x in proc.stdout]
                         + [self.queue.put(None)], daemon=True).start()

    def until(self, marker: str, timeout_s: float = 240) -> str:
        """All lines so far once one contains marker, or once the process has exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line.rstrip("\n"))
            if marker in line:
                break
        else:
            self.proc.kill()
            pytest.fail(f"no {marker!r} within {timeout_s}s (hang guard): {self.lines}")
        return "\n".join(self.lines)


def test_serve_tiny_pair_answers_openai_client_and_stops_on_sigint(model_dirs, tmp_path):
    proc = start_serve(model_dirs["draft_perturbed"], model_dirs["target"], tmp_path,
                       "--default-k", "4", "--adaptive-k", "0")
    output = Output(proc)
    try:
        text = output.until(READY)
        assert READY in text, text
        api = re.search(r"OpenAI-compatible API: (http://127\.0\.0\.1:\d+/v1)\s+\(model \"(.+)\"\)",
                        text)
        assert api, text
        client = openai.OpenAI(base_url=api.group(1), api_key="unused", max_retries=0,
                               timeout=120)
        spec = client.completions.create(model=api.group(2), prompt=PROMPTS[0], max_tokens=24,
                                         temperature=0)
        alone = client.completions.create(model=api.group(2), prompt=PROMPTS[0], max_tokens=24,
                                          temperature=0, extra_body={"num_speculative_tokens": 0})
        # speculation ran (--default-k 4 reached the coordinator) and changed nothing
        assert spec.model_extra["speculative_decoding"]["num_draft_tokens"] > 0
        assert alone.model_extra["speculative_decoding"]["num_draft_tokens"] == 0
        assert spec.choices[0].text == alone.choices[0].text
        assert spec.usage.completion_tokens == alone.usage.completion_tokens > 0
        # the printed curl works as pasted
        curl = next(line.strip() for line in output.lines if line.strip().startswith("curl "))
        if shutil.which("curl"):
            reply = json.loads(subprocess.run(shlex.split(curl), capture_output=True, text=True,
                                              timeout=120, check=True).stdout)
            assert reply["choices"][0]["message"]["role"] == "assistant", reply
        port = int(api.group(1).split(":")[2].split("/")[0])
    finally:
        proc.send_signal(signal.SIGINT)
        rest = output.until("exit codes:", timeout_s=90)
        rc = proc.wait(60)
    assert rc == 0, rest
    assert "exit codes: {'coordinator': 0, 'target': 0, 'draft': 0}" in rest, rest
    with pytest.raises(openai.APIConnectionError):  # nothing listens any more
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                      max_retries=0, timeout=10).models.list()


def test_serve_fails_with_the_failing_childs_error(model_dirs, tmp_path):
    missing = tmp_path / "no-such-target"
    proc = start_serve(model_dirs["draft_perturbed"], missing, tmp_path)
    out = Output(proc).until("\0never\0")
    rc = proc.wait(60)
    assert rc == 1, out
    assert "target exited with 2" in out, out
    assert f"--model {missing}: no such path" in out, out
    assert READY not in out


def test_flags_go_to_the_processes_whose_parsers_have_them():
    parsers = process_parsers()
    routed = route(["--dtype", "bfloat16", "--min-confidence=0.4", "--default-k", "4",
                    "--log-level", "debug", "--host", "0.0.0.0", "--metrics-port", "9090"],
                   parsers)
    assert routed["draft"] == ["--dtype", "bfloat16", "--min-confidence=0.4",
                               "--log-level", "debug"]
    assert routed["target"] == ["--dtype", "bfloat16", "--log-level", "debug"]
    assert routed["coordinator"] == ["--default-k", "4", "--log-level", "debug",
                                     "--host", "0.0.0.0", "--metrics-port", "9090"]
    for bad, says in ((["--no-such-flag", "1"], "no process has this flag"),
                      (["--model", "x"], "set by serve"), (["--dtype"], "needs a value"),
                      (["float32"], "unexpected argument")):
        with pytest.raises(RoutingError, match=says):
            route(bad, parsers)


def test_a_bad_value_is_refused_by_that_processs_parser_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "specdec", "serve", "--dtype", "float64",
                           "--log-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "python -m draft_service: error: argument --dtype: invalid choice: 'float64'" in \
        done.stderr
    assert not list(tmp_path.iterdir())  # no process was started
