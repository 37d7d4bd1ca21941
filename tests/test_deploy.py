"""Static checks of compose.yaml, compose.cpu.yaml and deploy/Dockerfile (no Docker engine
here): the Compose schema, and that commands, flags, environment, ports and health checks
match what the code accepts. A renamed flag or module makes these fail."""

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
from compose_files import load, merge, plain

import coordinator.config
from specdec.config import env_name, model_service_parser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(importlib.util.find_spec("check_jsonschema").origin).parent / \
    "builtin_schemas/vendor/compose-spec.json"
PARSERS = {
    "draft_service": lambda: model_service_parser("draft", "draft", 50051),
    "target_service": lambda: model_service_parser("target", "target", 50052),
    "coordinator": coordinator.config.parser,
}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines if " " in ln]


def image_env() -> dict[str, str]:
    """ENV of the final stage (what every container starts with)."""
    env: dict[str, str] = {}
    for op, arg in dockerfile_instructions():
        if op == "FROM":
            env = {}
        elif op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arg)))
    return env


@pytest.fixture(scope="module")
def gpu():
    return load(ROOT / "compose.yaml")


@pytest.fixture(scope="module")
def cpu(gpu):
    return merge(gpu, load(ROOT / "compose.cpu.yaml"))


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml"])
def test_compose_files_follow_the_compose_specification(name):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(plain(load(ROOT / name)), schema)


def test_the_schema_check_has_teeth():
    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"x": {"depends_on": {"y": {"condition": "up"}}}}},
                            schema)


def module_of(service: dict) -> str:
    command = service["command"]
    assert command[:2] == ["python", "-m"], command
    return command[2]


def parse_duration(text: str) -> float:
    """A compose duration such as '40s' or '1m30s', in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total, number = total + float(number) * units[ch], ""
    return total


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_every_service_runs_a_real_entrypoint_with_flags_it_accepts(variant, request,
                                                                     monkeypatch):
    doc = request.getfixturevalue(variant)
    ports, metrics_ports, http_ports = {}, {}, {}
    for name, service in doc["services"].items():
        module = module_of(service)
        assert importlib.util.find_spec(f"{module}.__main__"), module
        env = {**image_env(), **{k: str(v) for k, v in service["environment"].items()}}
        for var in list(env):
            if var.startswith("SPECDEC_"):
                monkeypatch.setenv(var, env[var])
        parser = PARSERS[module]()  # options read SPECDEC_* when they are added
        known = {env_name(a.option_strings[0]) for a in parser._actions if a.option_strings}
        unknown = sorted(v for v in env if v.startswith("SPECDEC_") and v not in known)
        assert not unknown, f"{name}: no flag reads {unknown}"
        args = parser.parse_args([])  # fails on a bad value or a missing required flag
        assert args.host == "0.0.0.0", name
        ports[name] = args.port
        metrics_ports[name] = args.metrics_port
        http_ports[name] = args.http_port if name == "coordinator" else None
        assert args.metrics_port > 0 and args.shutdown_grace_s > 0, name
        # compose waits past the service's own drain before it sends SIGKILL
        assert parse_duration(service["stop_grace_period"]) > args.shutdown_grace_s, name
        probe = service["healthcheck"]["test"]
        assert probe[:4] == ["CMD", "python", "-m", "specdec.healthprobe"], probe
        assert probe[4] == f"127.0.0.1:{args.port}", (name, probe)
        assert importlib.util.find_spec("specdec.healthprobe")
        assert service["volumes"] == ["models:/models"]
        # least privilege; the models volume and /tmp are the only places written
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert env["HOME"] == "/tmp", name
        if name != "coordinator":  # gated models: the host's HF_TOKEN passes through
            assert "HF_TOKEN" in service["environment"], name
        for var in list(env):
            if var.startswith("SPECDEC_"):
                monkeypatch.delenv(var)
    coord = doc["services"]["coordinator"]["environment"]
    assert coord["SPECDEC_DRAFT"] == f"dns:///draft:{ports['draft']}"
    assert coord["SPECDEC_TARGET"] == f"dns:///target:{ports['target']}"
    assert doc["services"]["coordinator"]["ports"] == [  # this host only, by default
        f"127.0.0.1:50050:{ports['coordinator']}", f"127.0.0.1:8000:{http_ports['coordinator']}",
        f"127.0.0.1:9090:{metrics_ports['coordinator']}"]
    assert set(doc["volumes"]) == {"models"}


def test_gpu_layout_and_start_order(gpu):
    for name, device in (("draft", "0"), ("target", "1")):
        service = gpu["services"][name]
        (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["device_ids"] == [device] and reservation["capabilities"] == ["gpu"]
        assert service["environment"]["SPECDEC_DEVICE"] == "cuda"
    assert gpu["services"]["coordinator"]["depends_on"] == {
        "draft": {"condition": "service_healthy"}, "target": {"condition": "service_healthy"}}
    assert "deploy" not in gpu["services"]["coordinator"]


def test_cpu_override_removes_gpus(cpu):
    for name in ("draft", "target"):
        service = cpu["services"][name]
        assert "deploy" not in service
        assert service["environment"]["SPECDEC_DEVICE"] == "cpu"
        assert service["environment"]["SPECDEC_MODEL"]  # inherited from compose.yaml
    for service in cpu["services"].values():
        assert service["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
        assert service["image"] == "specdec:cpu"


def test_dockerfile_references_files_and_entrypoints_that_exist():
    ops = dockerfile_instructions()
    for op, arg in ops:
        if op == "COPY" and "--from=" not in arg:
            *sources, _ = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert not src.startswith(("models", "results")), "models are never baked in"
        if op in ("CMD", "HEALTHCHECK") and "python" in arg:
            module = re.search(r'"-m", "([\w.]+)"', arg).group(1)
            spec = importlib.util.find_spec(module)
            assert spec and (module == "specdec.healthprobe"
                             or importlib.util.find_spec(f"{module}.__main__")), module
    users = [arg for op, arg in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    assert ("VOLUME", '["/models"]') in ops
    env = image_env()
    assert env["SPECDEC_CACHE_DIR"] == "/models"
    for parser in PARSERS.values():
        known = {env_name(a.option_strings[0]) for a in parser()._actions if a.option_strings}
        assert {v for v in env if v.startswith("SPECDEC_")} <= known


def test_image_dependencies_are_pinned_once():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    serve = [ln.strip() for ln in (ROOT / "deploy/requirements-serve.txt").read_text()
             .splitlines() if ln.strip() and not ln.startswith("#")]
    for name in serve:
        assert name.lower().replace("_", "-") in pins, f"{name} is not pinned in requirements.txt"
    torch_pin = re.search(r"TORCH_VERSION :?= (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"ARG TORCH_VERSION={torch_pin}" in (ROOT / "deploy/Dockerfile").read_text()


def test_image_has_every_package_the_services_import():
    """Every third-party module the serving code imports comes from a distribution the image
    installs (a forgotten one would crash the container at start, not a test)."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    serve = {ln.strip().lower().replace("_", "-") for ln in
             (ROOT / "deploy/requirements-serve.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")} | {"torch"}
    local = {"coordinator", "draft_service", "target_service", "specdec"}
    missing = set()
    for package in local:
        for path in (ROOT / package).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                         and node.module else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in local or top in sys.stdlib_module_names:
                        continue
                    found = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                    if not found & serve:
                        missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"not in deploy/requirements-serve.txt: {sorted(missing)}"
