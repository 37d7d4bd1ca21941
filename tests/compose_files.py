"""Reading compose files the way `docker compose` does, for static checks: YAML with the
!reset / !override tags, ${VAR:-default} interpolation, and override-file merging."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class Reset:
    """`!reset`: drop the value inherited from earlier files."""
    value: object


@dataclass
class Override:
    """`!override`: replace (not merge) the value inherited from earlier files."""
    value: object


class ComposeLoader(yaml.SafeLoader):
    pass


def _construct(cls):
    def construct(loader, node):
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node))
    return construct


ComposeLoader.add_constructor("!reset", _construct(Reset))
ComposeLoader.add_constructor("!override", _construct(Override))

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Substitute ${NAME}, ${NAME:-default} and ${NAME-default} in every string."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, (Reset, Override)):
        return type(value)(interpolate(value.value, env))
    return value


def load(path: Path, env: dict[str, str] | None = None) -> dict:
    doc = yaml.load(path.read_text(), Loader=ComposeLoader)
    return interpolate(doc, env or {})


def plain(value):
    """The document as the schema sees it: tags replaced by their values, YAML merge keys
    (<<) already resolved by the loader, x- extensions kept."""
    if isinstance(value, (Reset, Override)):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merge(base, override):
    """Compose's merge of an override file: mappings merge key by key, !reset removes,
    !override replaces, other values replace."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return plain(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            merged = merge(base.get(key), value)
            if merged is None and isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    return plain(override)
