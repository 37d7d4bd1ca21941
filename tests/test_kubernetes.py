"""Static checks of deploy/kubernetes (no cluster here): every manifest of the GPU base, the CPU
overlay and the examples validates against the Kubernetes schemas offline
(kubernetes-validate, strict: unknown fields fail), and the manifests agree with the programs:
modules, flags and SPECDEC_* values, ports, probes, DNS names, drain timing, GPUs, user."""

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
from kustomize import containers, find, load_docs, render
from prometheus_client import CollectorRegistry

import coordinator.config
from coordinator.upstream.addresses import parse_entries
from specdec.config import env_name, model_service_parser
from specdec.rpc.metrics import ServiceMetrics
from specdec.rpc.server import LIVENESS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/kubernetes"
VERSIONS = ["1.30.0", "1.37.0"]  # the oldest release with preStop sleep, and the newest
PARSERS = {
    "draft_service": lambda: model_service_parser("draft", "draft", 50051),
    "target_service": lambda: model_service_parser("target", "target", 50052),
    "coordinator": coordinator.config.parser,
}
VARIANTS = {"base": K8S / "base", "cpu": K8S / "overlays/cpu", "mtls": K8S / "overlays/mtls"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    return request.param, render(VARIANTS[request.param])


def examples() -> list[dict]:
    return [d for p in sorted((K8S / "examples").glob("*.yaml")) for d in load_docs(p)]


def env_of(docs, container) -> dict[str, str]:
    """The container's environment: its envFrom ConfigMaps, then its env (values only: those
    read from Secrets are left to secret_refs)."""
    env = {}
    for ref in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_refs(docs) -> list[tuple[str, str, str]]:
    """(container, variable, 'secret/key') of every variable read from a Secret."""
    return [(c["name"], e["name"], f"{e['valueFrom']['secretKeyRef']['name']}/"
             f"{e['valueFrom']['secretKeyRef']['key']}")
            for c in containers(docs) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]


def workload(docs, name):
    return next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment")
                and d["metadata"]["name"] == name)


def pod(docs, name):
    return workload(docs, name)["spec"]["template"]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(variant, version):
    _, docs = variant
    for doc in docs + examples():
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap",
            "Namespace"} <= kinds


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d["spec"].update(replica=3), "a misspelt field"),
    (lambda d: d["spec"].update(replicas="two"), "a wrong type"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].pop(
        "port"), "a probe without its required port"),
])
def test_the_schema_validation_has_teeth(mutate, why):
    doc = copy.deepcopy(workload(render(VARIANTS["base"]), "target"))
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_containers_run_real_programs_with_flags_they_accept(variant, monkeypatch):
    _, docs = variant
    seen = set()
    for c in containers(docs):
        assert c["command"][:2] == ["python", "-m"]
        module = c["command"][2]
        assert module in PARSERS, f"{c['name']} runs unknown module {module}"
        seen.add(module)
        env = env_of(docs, c)
        parser = PARSERS[module]
        known = {env_name(a.option_strings[0]) for a in parser()._actions if a.option_strings}
        unknown = {k for k in env if k.startswith("SPECDEC_")} - known
        assert not unknown, f"{c['name']}: {unknown} are not flags of {module}"
        # Every value parses (types, choices) as the program would read it at start.
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            args = parser().parse_args([])
        if module == "coordinator":
            cfg = coordinator.config.from_args(args)
            assert cfg.schedule == "pipelined"  # draft and target on separate devices
    assert seen == set(PARSERS)


def test_ports_probes_and_services_agree(variant):
    _, docs = variant
    for name in ("draft", "target", "coordinator"):
        spec = pod(docs, name)
        (c,) = spec["spec"]["containers"]
        env = env_of(docs, c)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == int(env["SPECDEC_PORT"])
        assert ports["metrics"] == int(env["SPECDEC_METRICS_PORT"])
        if name == "coordinator":
            assert ports["http"] == int(env["SPECDEC_HTTP_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == ports["grpc"], (name, probe)
        assert c["livenessProbe"]["grpc"]["service"] == LIVENESS
        assert "service" not in c["readinessProbe"]["grpc"]  # "" = overall readiness
        notes = spec["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == ports["metrics"]

        service = find(docs, "Service", name)
        labels = spec["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert workload(docs, name)["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in ports, (name, p)
        pdb = find(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if name == "coordinator":
            assert service["spec"]["type"] == "ClusterIP"
        else:  # one DNS record per replica, and the StatefulSet's governing Service
            assert service["spec"]["clusterIP"] == "None"
            assert workload(docs, name)["spec"]["serviceName"] == name


def test_coordinators_resolve_every_replica_of_the_headless_services(variant):
    _, docs = variant
    (c,) = pod(docs, "coordinator")["spec"]["containers"]
    env = env_of(docs, c)
    for tier in ("draft", "target"):
        (entry,) = parse_entries(env[f"SPECDEC_{tier.upper()}"])
        assert entry.dns and not entry.server  # the pod's resolver, re-resolved
        service = find(docs, "Service", tier)
        grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert entry.host.split(".")[0] == tier and entry.port == grpc_port


def test_drain_fits_the_termination_grace_and_probes_outlast_it(variant):
    _, docs = variant
    for name in ("draft", "target", "coordinator"):
        spec = pod(docs, name)["spec"]
        (c,) = spec["containers"]
        env = env_of(docs, c)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = float(env["SPECDEC_SHUTDOWN_GRACE_S"]) + pre_stop
        assert spec["terminationGracePeriodSeconds"] >= drain + 5, name
        live = c["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > drain, name
        start = c["startupProbe"]
        budget = start["periodSeconds"] * start["failureThreshold"]
        assert budget >= 900, name  # a first start fetches the model (compose: 15 min)
        if name == "coordinator":
            assert budget >= float(env["SPECDEC_CONNECT_TIMEOUT_S"])


def test_gpu_base_requests_one_gpu_per_model_replica_and_the_cpu_overlay_none(variant):
    kind, docs = variant
    for name in ("draft", "target"):
        spec = pod(docs, name)["spec"]
        (c,) = spec["containers"]
        env = env_of(docs, c)
        gpus = [c["resources"][k].get("nvidia.com/gpu") for k in ("requests", "limits")]
        if kind != "cpu":
            assert gpus == [1, 1] and env["SPECDEC_DEVICE"] == "cuda"
            assert c["image"] == "specdec:cuda"
            assert "SPECDEC_QUANTIZATION" not in env  # CPU kernels only
        else:
            assert gpus == [None, None] and env["SPECDEC_DEVICE"] == "cpu"
            assert "tolerations" not in spec and c["image"] == "specdec:cpu"
            assert env.get("SPECDEC_QUANTIZATION") == ("int4" if name == "draft" else None)
    assert "nvidia.com/gpu" not in str(pod(docs, "coordinator"))


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root(variant):
    _, docs = variant
    uid = int(re.search(r"useradd --uid (\d+)", (ROOT / "deploy/Dockerfile").read_text())[1])
    for name in ("draft", "target", "coordinator"):
        spec = pod(docs, name)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        (c,) = spec["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/models", "/tmp"} <= mounts  # SPECDEC_CACHE_DIR, and scratch
        assert spec["topologySpreadConstraints"]


def test_model_caches_persist_per_replica():
    docs = render(VARIANTS["base"])
    for name in ("draft", "target"):
        claims = {t["metadata"]["name"] for t in workload(docs, name)["spec"]
                  ["volumeClaimTemplates"]}
        assert "models" in claims


def test_the_coordinators_cache_holds_a_tokenizer_not_a_model(variant):
    """The coordinator loads the tokenizer alone (specdec.fetch.resolve_tokenizer_dir): its
    cache is a small scratch volume, not a model volume."""
    _, docs = variant
    spec = pod(docs, "coordinator")["spec"]
    (c,) = spec["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/models"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["sizeLimit"] == "2Gi"
    assert "volumeClaimTemplates" not in workload(docs, "coordinator")["spec"]


def test_the_hpa_example_scales_a_real_workload_on_a_specdec_metric():
    docs = render(VARIANTS["base"])
    (hpa,) = [d for d in examples() if d["kind"] == "HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    workload_doc = find(docs, ref["kind"], ref["name"])
    assert workload_doc["apiVersion"] == ref["apiVersion"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    assert metric in {s.name for m in registry.collect() for s in m.samples}


def labels_of(docs, name) -> dict:
    return pod(docs, name)["metadata"]["labels"]


def admits(policy: dict, peer_labels: dict, port: str) -> bool:
    """Whether `policy` lets a pod with `peer_labels` (in any namespace) reach `port`.
    Only the forms the manifests use are understood; anything else fails the test."""
    for rule in policy["spec"].get("ingress", []):
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        if "from" not in rule:
            return True  # every source
        for peer in rule["from"]:
            assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
            assert peer.get("namespaceSelector", {}) == {}, peer  # (any namespace, or same)
            wanted = peer["podSelector"].get("matchLabels", {})
            assert set(peer["podSelector"]) == {"matchLabels"}, peer
            if wanted.items() <= peer_labels.items():
                return True
    return False


def test_network_policies_admit_only_coordinators_to_the_models(variant):
    _, docs = variant
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    coordinator = labels_of(docs, "coordinator")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app": "anything-else"}
    for name in ("draft", "target", "coordinator"):
        mine = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items()
                <= labels_of(docs, name).items()]
        assert len(mine) == 1, name
        (policy,) = mine
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (c,) = pod(docs, name)["spec"]["containers"]
        assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} <= {
            p["name"] for p in c["ports"]}, name  # named ports that exist
        assert admits(policy, prometheus, "metrics") and not admits(policy, stranger, "metrics")
        if name == "coordinator":  # clients from anywhere
            assert admits(policy, stranger, "grpc") and admits(policy, stranger, "http")
        else:
            assert admits(policy, coordinator, "grpc"), name
            for other in (stranger, prometheus, labels_of(docs, "draft"),
                          labels_of(docs, "target")):
                assert not admits(policy, other, "grpc"), (name, other)


def secret_volume_refs(docs) -> list[tuple[str, str, str]]:
    """(workload, volume, 'secret/key') of every key a pod mounts from a Secret."""
    return [(d["metadata"]["name"], v["name"], f"{v['secret']['secretName']}/{item['key']}")
            for d in docs if d["kind"] in ("StatefulSet", "Deployment")
            for v in d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v
            for item in v["secret"]["items"]]


def test_every_secret_reference_names_a_key_of_the_example_secrets(variant):
    kind, docs = variant
    example = {f"{d['metadata']['name']}/{key}" for d in load_docs(K8S / "examples/secrets.yaml")
               if d["kind"] == "Secret" for key in {**d.get("stringData", {}),
                                                    **d.get("data", {})}}
    for name, volume, ref in secret_volume_refs(docs):
        assert ref in example, (name, volume, ref)
    assert bool(secret_volume_refs(docs)) == (kind == "mtls")
    refs = secret_refs(docs)
    assert {(c, var) for c, var, _ in refs} == {
        ("coordinator", "SPECDEC_API_KEY"), ("coordinator", "HF_TOKEN"), ("draft", "HF_TOKEN"),
        ("target", "HF_TOKEN")}
    for c, var, ref in refs:
        assert ref in example, (c, var, ref)
    for c in containers(docs):  # optional: a cluster without the Secrets still starts
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                assert e["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_mtls_overlay_points_every_tls_flag_at_a_mounted_secret_key():
    docs = render(VARIANTS["mtls"])
    wanted = {"draft": ("SPECDEC_TLS_CERT_FILE", "SPECDEC_TLS_KEY_FILE",
                        "SPECDEC_TLS_CLIENT_CA_FILE"),
              "target": ("SPECDEC_TLS_CERT_FILE", "SPECDEC_TLS_KEY_FILE",
                         "SPECDEC_TLS_CLIENT_CA_FILE"),
              "coordinator": ("SPECDEC_UPSTREAM_CA_FILE", "SPECDEC_UPSTREAM_CERT_FILE",
                              "SPECDEC_UPSTREAM_KEY_FILE")}
    for name, variables in wanted.items():
        spec = pod(docs, name)["spec"]
        (c,) = spec["containers"]
        env = env_of(docs, c)
        mounted = {}  # file path -> 'secret/key'
        for m in c["volumeMounts"]:
            # (a mount without a pod volume is a volumeClaimTemplate)
            volume = next((v for v in spec["volumes"] if v["name"] == m["name"]), {})
            for item in volume.get("secret", {}).get("items", []):
                mounted[f"{m['mountPath']}/{item['path']}"] = \
                    f"{volume['secret']['secretName']}/{item['key']}"
        for var in variables:
            assert env[var] in mounted, (name, var, env[var])
        # the models ask for client certificates; the coordinator shows one from that CA
        if name != "coordinator":
            assert mounted[env["SPECDEC_TLS_CLIENT_CA_FILE"]] == "specdec-tls/ca.crt"
        else:
            assert mounted[env["SPECDEC_UPSTREAM_CA_FILE"]] == "specdec-tls/ca.crt"
            assert env["SPECDEC_UPSTREAM_TLS_SERVER_NAME"]  # (dialled by pod address)
