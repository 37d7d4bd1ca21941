#!/usr/bin/env bash
# `make test-containers`: set up a container engine and its compose tool, fetch the image's
# wheels, then run tests/test_containers.py against them (docs/testing.md).
#
#   tests/containers.sh [PYTHON] [pytest args...]
#
# Engine: Docker with Compose v2 when `docker info` and `docker compose version` work;
# otherwise Podman with podman-compose (rootful). As root on Debian/Ubuntu, missing Podman
# packages are installed with apt-get; otherwise this prints the command and stops.
# SPECDEC_CONTAINER_ENGINE=docker|podman forces the choice; SPECDEC_COMPOSE names another
# podman-compose.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift || true
TORCH_VERSION=${TORCH_VERSION:?set TORCH_VERSION (the Makefile does)}
WHEELS_DIR=${SPECDEC_WHEELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/specdec/container-wheels}
BASE_IMAGE=localhost/bookworm-python:3.11
APT_PACKAGES="podman runc mmdebstrap"

say() { echo "test-containers: $*" >&2; }

docker_ready() {
    command -v docker >/dev/null && docker info >/dev/null 2>&1 \
        && docker compose version >/dev/null 2>&1
}

engine=${SPECDEC_CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if docker_ready; then engine=docker; else engine=podman; fi
fi

python_image=""  # empty: the Dockerfile's default (pulled from the registry)
if [ "$engine" = docker ]; then
    docker_ready || { say "docker or 'docker compose' (v2) is not usable"; exit 1; }
    compose="docker compose"
else
    if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing $APT_PACKAGES (apt-get)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
        else
            say "no Docker engine and no Podman; install them as root first:"
            say "  apt-get update && apt-get install -y $APT_PACKAGES"
            exit 1
        fi
    fi
    [ "$(id -u)" = 0 ] || { say "Podman runs rootful here: run as root"; exit 1; }
    conf=/etc/containers/containers.conf
    if [ ! -e "$conf" ]; then
        # crun fails on hybrid cgroups and sandboxes may forbid raising rlimits
        say "writing $conf (runc, cgroupfs, no default ulimits)"
        printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' \
            > "$conf"
    fi
    compose=${SPECDEC_COMPOSE:-$(dirname "$PY")/podman-compose}
    if [ ! -x "$compose" ]; then
        say "installing podman-compose into $(dirname "$PY")"
        "$PY" -m pip install -q -r tests/requirements-containers.txt
    fi
    if podman image exists python:3.11.7-slim-bookworm; then
        python_image=python:3.11.7-slim-bookworm
    else
        # no registry needed: a Debian base with Python 3.11 from Debian's own packages
        if ! podman image exists "$BASE_IMAGE"; then
            say "building $BASE_IMAGE with mmdebstrap (about a minute)"
            mmdebstrap --quiet --variant=minbase \
                --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
                bookworm - | podman import - "$BASE_IMAGE" >/dev/null
        fi
        python_image=$BASE_IMAGE
    fi
fi

# Every wheel the image installs, fetched by this machine's pip (its indexes, certificates
# and local wheels) into one directory the build reads over HTTP. Refetched when a pin moves.
stamp=$(cat requirements.txt deploy/requirements-serve.txt | sha256sum | cut -c1-16)-$TORCH_VERSION
if [ "$(cat "$WHEELS_DIR/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "downloading the image's wheels into $WHEELS_DIR"
    mkdir -p "$WHEELS_DIR"
    "$PY" -m pip download -q --only-binary=:all: -d "$WHEELS_DIR" -c requirements.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION" \
        -r deploy/requirements-serve.txt 2> >(grep -v "^WARNING: Location 'file:" >&2)
    if ! ls "$WHEELS_DIR" | grep -q "^torch-$TORCH_VERSION+cpu-"; then
        say "pip found no CPU build of torch $TORCH_VERSION (found: $(ls "$WHEELS_DIR" | grep '^torch-'))"
        say "name PyTorch's CPU index: make test-containers TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
        exit 1
    fi
    echo "$stamp" > "$WHEELS_DIR/.stamp"
fi

say "engine $engine, compose: $compose"
export SPECDEC_CONTAINER_ENGINE=$engine SPECDEC_COMPOSE=$compose \
    SPECDEC_PYTHON_IMAGE=$python_image SPECDEC_WHEELS_DIR=$WHEELS_DIR
# the first test also builds the image and starts the stack: a longer hang guard
exec "$PY" -m pytest -q --timeout 1800 tests/test_containers.py "$@"
