"""Rendering deploy/kubernetes the way `kubectl apply -k` does, for static checks (no kustomize
binary or cluster here): resources (files and bases), namespace, images, and JSON 6902
patches. A kustomization using any other field fails loudly rather than being half-read."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet"}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which "
                         f"tests/kustomize.py does not render; extend it")
    docs: list[dict] = []
    for resource in k["resources"]:
        path = directory / resource
        docs += render(path) if path.is_dir() else load_docs(path)
    docs = copy.deepcopy(docs)
    for patch in k.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        hits = [i for i, d in enumerate(docs) if d["kind"] == target["kind"]
                and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"patch {patch['path']} matches no resource ({target})")
        for i in hits:
            docs[i] = jsonpatch.apply_patch(docs[i], ops)
    for image in k.get("images", []):
        for c in containers(docs):
            name, _, _ = c["image"].partition(":")
            if name == image["name"]:
                c["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def containers(docs: list[dict]) -> list[dict]:
    return [c for d in docs if d["kind"] in WORKLOADS
            for c in d["spec"]["template"]["spec"]["containers"]]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]
