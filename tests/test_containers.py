"""The compose stack run for real: the CPU image built from deploy/Dockerfile, draft, target and
coordinator brought up with compose.yaml + compose.cpu.yaml on their own network, a tiny model
pair made here bound at /models. Greedy output through the published ports equals the target
alone; a crashed draft is survived and restarted; SIGTERM drains the coordinator; `down -v`
leaves nothing behind.

Run by `make test-containers` (tests/containers.sh sets up Docker or Podman, see
docs/testing.md); skipped otherwise, so `make test` never builds images. The tests run in file
order on one stack: the last two stop parts of it.
"""

import json
import os
import threading

import grpc
import openai
import pytest
import torch
from containers import WHEELS_PORT, Engine, free_port, serve_directory

from coordinator.client import generate
from specdec.models import load_model
from specdec.v1 import generator_pb2, generator_pb2_grpc
from stack import stream_with_faults, wait_until
from tiny_models import EOS, PROMPTS, build_model, perturb, save, tiny_config, train_tokenizer

PROJECT = "specdec-test"
IMAGE = "specdec:cpu"
ENGINE = Engine.from_env(PROJECT)
pytestmark = pytest.mark.skipif(
    ENGINE is None, reason="container tests run with `make test-containers` only (they build "
    "the image and need Docker or Podman; docs/testing.md)")
PORTS = {"draft": 50051, "target": 50052, "coordinator": 50050}
MAX_NEW = 600  # long streams (~1 s here), so a fault at the third token lands mid-stream


def make_pair(root):
    """The tiny target with a 1024-token context, and a perturbed copy as the draft."""
    tok = train_tokenizer()
    config = tiny_config(len(tok), tok.convert_tokens_to_ids(EOS), max_position_embeddings=1024)
    target = build_model(config, seed=1)
    return (save(target, tok, root / "target"),
            save(perturb(target, 0.03, seed=2), tok, root / "draft"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    models = tmp_path_factory.mktemp("container-models")
    target, _ = make_pair(models)
    # the image's user (uid 10001) reads every file (safetensors writes 0600) and writes its
    # caches beside them
    for path in models.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    models.chmod(0o777)
    return models, load_model(str(target), "float32", "cpu",
                              str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def reference(pair):
    """Greedy target-only continuations, longest first (a random model may stop early)."""
    lm = pair[1]
    out = {}
    for prompt in PROMPTS[:6]:
        ids = lm.tokenizer(prompt).input_ids
        with torch.inference_mode():
            out[prompt] = lm.model.generate(
                torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                eos_token_id=lm.eos_token_ids, pad_token_id=lm.eos_token_ids[0],
            )[0, len(ids):].tolist()
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


@pytest.fixture(scope="module")
def stack(pair):
    """Build the image, bring the stack up, wait until all three report SERVING."""
    models, lm = pair
    with serve_directory(os.environ["SPECDEC_WHEELS_DIR"], WHEELS_PORT) as wheels:
        ENGINE.build(IMAGE, wheels, os.environ.get("SPECDEC_PYTHON_IMAGE") or None)
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    env = {"SPECDEC_MODELS": str(models), "DRAFT_MODEL": "/models/draft",
           "TARGET_MODEL": "/models/target", "DRAFT_DTYPE": "float32",
           "TARGET_DTYPE": "float32", "SPECDEC_PUBLISH": str(ports["grpc"]),
           "SPECDEC_HTTP_PUBLISH": str(ports["http"]),
           "SPECDEC_METRICS_PUBLISH": str(ports["metrics"]), "SHUTDOWN_GRACE_S": "30"}
    ENGINE.compose_run("down", "-v", env=env)  # what an interrupted earlier run left
    try:
        ENGINE.compose_run("up", "-d", "--no-build", env=env)
        ids = {service: ENGINE.container(service) for service in PORTS}
        for service, port in PORTS.items():
            assert wait_until(lambda s=service, p=port: ENGINE.probe(ids[s], p), timeout=300,
                              interval=2), f"{service} never reported SERVING"
        yield {"addr": f"127.0.0.1:{ports['grpc']}", "http": ports["http"], "ids": ids,
               "env": env, "lm": lm}
    finally:
        ENGINE.compose_run("down", "-v", "-t", "40", env=env)


def request(prompt, k=4, max_new=MAX_NEW):
    """K fixed: adaptive K (the coordinator's default) rightly finds that the tiny draft,
    as dear per step as the target, does not pay, and would propose nothing."""
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k, adaptive_k=False)


def test_image_runs_as_non_root_with_a_health_check(stack):
    assert ENGINE.run("image", "inspect", "--format", "{{.Config.User}}", IMAGE) == "specdec"
    assert "specdec.healthprobe" in ENGINE.run("image", "inspect", "--format",
                                               "{{json .Config.Healthcheck}}", IMAGE)
    for service, cid in stack["ids"].items():
        assert ENGINE.inspect(cid, "{{.Config.User}}") == "specdec", service


def test_greedy_generation_through_the_published_port_equals_target_only(stack, reference):
    for prompt, ref in list(reference.items())[:3]:
        for k in (0, 4):
            got, _, stats = generate(stack["addr"], request(prompt, k), timeout_s=120)
            assert got == ref, (prompt, k)
        assert stats["proposed_draft_tokens"] > 0 and stats["accepted_draft_tokens"] > 0


def test_openai_client_through_the_published_http_port(stack, reference):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack['http']}/v1", api_key="unused",
                           max_retries=0, timeout=120)
    (model,) = client.models.list().data
    assert model.id == "/models/target"  # the target's --model inside its container
    prompt, ref = next(iter(reference.items()))
    resp = client.completions.create(model=model.id, prompt=prompt, max_tokens=32,
                                     temperature=0, extra_body={"adaptive_k": False})
    assert resp.choices[0].text == stack["lm"].tokenizer.decode(ref[:32])
    assert resp.usage.completion_tokens == len(ref[:32])
    assert resp.model_extra["speculative_decoding"]["num_draft_tokens"] > 0
    client.close()


def test_crashed_draft_mid_stream_completes_exactly_and_restarts(stack, reference):
    draft = stack["ids"]["draft"]
    restarts = int(ENGINE.inspect(draft, "{{.RestartCount}}"))
    prompt, ref = next(iter(reference.items()))
    ids, stats = stream_with_faults(stack["addr"], request(prompt),
                                    {3: lambda: ENGINE.crash(draft, IMAGE)}, timeout_s=120)
    assert ids == ref
    assert stats.proposed_draft_tokens > 0  # it speculated before the crash
    assert stats.draft_fallback_rounds > 0 and stats.draft_fallback_reason == "unavailable"
    # compose's `restart: unless-stopped` brings the same container back
    assert wait_until(lambda: int(ENGINE.inspect(draft, "{{.RestartCount}}")) > restarts,
                      timeout=60, interval=1)
    assert wait_until(lambda: ENGINE.probe(draft, PORTS["draft"]), timeout=300, interval=2)
    runs = []

    def speculates_again():
        runs.append(generate(stack["addr"], request(prompt), timeout_s=120))
        return runs[-1][2]["draft_fallback_rounds"] == 0 and \
            runs[-1][2]["accepted_draft_tokens"] > 0

    assert wait_until(speculates_again, timeout=120, interval=2)
    assert all(got == ref for got, _, _ in runs)


def test_sigterm_to_the_coordinator_drains_the_running_stream(stack, reference):
    """Next to last: it stops the coordinator."""
    coordinator = stack["ids"]["coordinator"]
    prompt, ref = next(iter(reference.items()))
    stopped = threading.Thread(target=ENGINE.run, args=("stop", "-t", "40", coordinator),
                               kwargs={"timeout": 90})
    with grpc.insecure_channel(stack["addr"]) as ch:
        call = generator_pb2_grpc.GeneratorStub(ch).Generate(request(prompt, k=0), timeout=120)
        ids = [next(call).token.id]
        stopped.start()
        for msg in call:
            if msg.HasField("token"):
                ids.append(msg.token.id)
    stopped.join()
    assert ids == ref
    assert ENGINE.inspect(coordinator, "{{.State.Status}}") == "exited"
    assert ENGINE.inspect(coordinator, "{{.State.ExitCode}}") == "0"
    # the SIGTERM came while the stream ran: it drained one request and left none unfinished
    events = {e["event"]: e for e in map(json.loads, (
        line for line in ENGINE.logs(coordinator).splitlines() if line.startswith("{")))
        if "event" in e}
    assert events["draining"]["running"] == 1 and events["stopped"]["unfinished"] == 0


def test_down_removes_containers_volumes_and_network(stack):
    ENGINE.compose_run("down", "-v", "-t", "40", env=stack["env"])
    assert ENGINE.leftovers() == {}
