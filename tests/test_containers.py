"""The real images and compose stack (CPU override, tiny models mounted from a temp dir):
Generate through the published port equals target-only decoding.

Needs a Docker engine with Compose v2.24+; skipped with the reason otherwise. Run them with
`make test` on a machine with Docker, or alone:
`.venv/bin/python -m pytest tests/test_containers.py`.
The first run builds the image (a few minutes: the torch CPU wheel).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from coordinator.client import generate
from specdec.v1 import generator_pb2
from tiny_models import PROMPTS

ROOT = Path(__file__).resolve().parent.parent


def engine_unavailable() -> str | None:
    """Why containers cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        import docker
        docker.from_env().ping()
    except Exception as e:  # any failure to reach the daemon means: skip
        return f"no Docker engine reachable ({type(e).__name__}: {e})"
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True,
                             text=True)
    if version.returncode != 0:
        return "docker compose (v2) is not installed"
    return None


REASON = engine_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"container tests: {REASON}")


@pytest.fixture(scope="module")
def compose_stack(model_dirs, tmp_path_factory):
    from testcontainers.compose import DockerCompose

    models = tmp_path_factory.mktemp("models")
    for name in ("draft_perturbed", "target"):
        shutil.copytree(model_dirs[name], models / name)
    os.chmod(models, 0o777)  # the image's non-root user writes its caches there
    env = {"SPECDEC_MODELS": str(models), "DRAFT_MODEL": "/models/draft_perturbed",
           "TARGET_MODEL": "/models/target", "DRAFT_DTYPE": "float32",
           "TARGET_DTYPE": "float32", "SPECDEC_PUBLISH": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    stack = DockerCompose(ROOT, compose_file_name=["compose.yaml", "compose.cpu.yaml"],
                          build=True, wait=True)
    try:
        stack.start()
        host = stack.get_service_host("coordinator", 50050)
        port = stack.get_service_port("coordinator", 50050)
        yield f"{host}:{port}"
    finally:
        stack.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_generate_through_the_compose_stack_equals_target_only(compose_stack, lms):
    lm = lms["target"]
    for prompt in PROMPTS[:4]:
        ids = lm.tokenizer(prompt).input_ids
        with torch.inference_mode():
            ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                    eos_token_id=lm.eos_token_ids,
                                    pad_token_id=lm.eos_token_ids[0])[0, len(ids):].tolist()
        for k in (0, 4):
            got, _, stats = generate(compose_stack, generator_pb2.GenerateRequest(
                prompt=prompt, max_new_tokens=16, num_speculative_tokens=k), timeout_s=120)
            assert got == ref, (prompt, k)
