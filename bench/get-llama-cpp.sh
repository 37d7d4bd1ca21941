#!/usr/bin/env bash
# Build llama.cpp's llama-completion and llama-speculative-simple for `python -m bench.run
# --llama-cpp` (the llama.cpp peer), from the llama.cpp vendored in the llama-cpp-python sdist
# (PyPI is reachable where GitHub may not be). Needs cmake, ninja (or make) and a C++ compiler;
# ~15 minutes on 2 cores. Never part of `make test`.
#
# Usage: bench/get-llama-cpp.sh [OUT_DIR]   (default: ~/.cache/specdec/llama.cpp)
# Prints LLAMA_CPP_DIR=<the binaries' directory> on its last line.
set -euo pipefail
VERSION=0.3.36
OUT=${1:-$HOME/.cache/specdec/llama.cpp}
PY=${PYTHON:-python3}
SRC="$OUT/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin"
if [ ! -x "$BIN/llama-speculative-simple" ] || [ ! -x "$BIN/llama-completion" ]; then
  mkdir -p "$OUT"
  if [ ! -d "$SRC" ]; then
    "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$OUT"
    tar -xzf "$OUT/llama_cpp_python-$VERSION.tar.gz" -C "$OUT"
  fi
  GEN=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")
  cmake -S "$SRC" -B "$SRC/build" -G "$GEN" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
  cmake --build "$SRC/build" -j "$(nproc)" --target llama-completion llama-speculative-simple
fi
echo "LLAMA_CPP_DIR=$BIN"
