#!/usr/bin/env bash
# Download the wheels `python -m bench.gpu` needs on a GPU machine without network into .whl/
# (git-ignored; carry it with the working tree). There, install them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
# They override that machine's own copies: transformers is pinned because specdec's batched
# pass needs a 2-D boolean logits_to_keep (transformers >= 5.23; 5.17 slices it wrongly), and
# grpcio/protobuf because the generated stubs in specdec/v1 refuse older runtimes.
# Versions: requirements.txt's pins, else the versions in this checkout's .venv (tested).
# Binary wheels are for CPython 3.12 on manylinux x86_64 (override: PY_VERSION=3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
DEST=${DEST:-.whl}
VENV_PY=${VENV_PY:-.venv/bin/python}

# transformers 5.23 and the tokenizer / hub versions it is pinned with
NAMES="transformers tokenizers huggingface_hub safetensors"
# the services' stubs and servers
NAMES+=" grpcio protobuf grpcio-health-checking grpcio-reflection prometheus-client"
# specdec's logging and cache dir; the coordinator's imports (HTTP API, DNS replicas)
NAMES+=" structlog platformdirs dnspython fastapi starlette pydantic pydantic-core"
NAMES+=" annotated-types annotated-doc typing-inspection typing-extensions uvicorn click h11"
NAMES+=" opentelemetry-api"
# huggingface_hub 2.x's HTTP client (httpx2) and what it imports, and transformers' regex
# (its import-time version check wants a newer one than older transformers did)
NAMES+=" httpx2 httpcore2 truststore anyio sniffio idna certifi filelock fsspec packaging regex"

version_of() {  # requirements.txt's pin, else the installed version in the venv
    local v
    v=$(grep -i -E "^$1==" requirements.txt | head -1 | sed -E 's/^[^=]+==([^ #]+).*/\1/') || true
    if [ -z "$v" ]; then
        v=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1")
    fi
    echo "$v"
}

mkdir -p "$DEST"
for name in $NAMES; do
    spec="$name==$(version_of "$name")"
    echo "== $spec"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$DEST" "$spec"
done
echo "== requirements of each wheel (check that the missing ones are in the list above):"
for w in "$DEST"/*.whl; do
    deps=$(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
           | sed 's/^Requires-Dist: //' | tr '\n' ';' || true)
    echo "$(basename "$w"): $deps"
done
du -ch "$DEST"/*.whl | tail -1
