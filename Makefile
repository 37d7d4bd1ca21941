# specdec: `make demo` (set up + run the three services + generate), `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# On a CPU-only machine without a local CPU wheel, point this at PyTorch's CPU wheel index
# (otherwise pip takes the CUDA build): make install TORCH_INDEX_URL=...
TORCH_INDEX_URL ?=
DTYPE ?= bfloat16
K ?= 8
ADAPTIVE ?= 1
MAX_NEW_TOKENS ?= 128
TEMPERATURE ?= 0
TOP_K ?= 0
TOP_P ?= 1.0
SEED ?= 0
PROBLEMS ?= 1
PAIRS ?= tiny qwen
CPU ?=
COMPOSE = docker compose -f compose.yaml $(if $(CPU),-f compose.cpu.yaml)
PROTOS := $(wildcard protos/specdec/v1/*.proto)

.PHONY: install proto test test-all test-stress run serve demo models lint clean bench bench-quick bench-rtt bench-concurrency bench-pipeline bench-gpu bench-overhead llama-cpp up down

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

proto: install
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# pytest-xdist workers, one test file each at a time (0 = one process). Most of a test's
# time is one Python thread driving gRPC round trips, so 2 workers nearly halve the suite
# on 2 cores; more share the same cores.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST)

# the default suite on a loaded machine: one busy-looping process per core runs beside it
# (tests/cpu_load.py), so a test that depends on the machine's speed fails here first
test-stress: install
	$(PY) tests/cpu_load.py -- $(PYTEST)

# The compose stack run for real (tests/test_containers.py; never part of `make test`): sets up
# Docker or Podman (tests/containers.sh), builds the CPU image from local wheels, runs the live
# checks, tears everything down. Times and image size: docs/testing.md.
.PHONY: test-containers
test-containers: install
	TORCH_VERSION=$(TORCH_VERSION) TORCH_INDEX_URL=$(TORCH_INDEX_URL) tests/containers.sh $(PY)

# everything, the tests marked slow too (see docs/testing.md for times)
test-all: install
	$(PYTEST) -m "slow or not slow"

models: install
	$(PY) -m specdec.fetch qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct

run: install
	$(PY) -m tools.run_local --dtype $(DTYPE)

# any draft/target pair behind the OpenAI-compatible API on :8000 until Ctrl-C (registry
# names, local directories, .gguf files or Hub ids); SERVE_ARGS: any service or coordinator
# flag, e.g. SERVE_ARGS="--dtype bfloat16 --draft-args='--quantization int4'"
DRAFT ?= qwen2.5-coder-0.5b-instruct
TARGET ?= qwen2.5-coder-1.5b-instruct
serve: install
	$(PY) -m specdec serve --draft $(DRAFT) --target $(TARGET) $(SERVE_ARGS)

demo: install
	$(PY) -m tools.demo --dtype $(DTYPE) --k $(K) --adaptive $(ADAPTIVE) \
		--max-new-tokens $(MAX_NEW_TOKENS) \
		--temperature $(TEMPERATURE) --top-k $(TOP_K) --top-p $(TOP_P) --seed $(SEED) \
		--problems $(PROBLEMS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) results .pytest_cache

# specdec vs K=0 vs Hugging Face assisted generation, K x temperature x domain (~20 min here);
# BENCH_ARGS passes more flags (see python -m bench.run --help).
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: install
	$(PY) -m bench.run --quick --out results/bench-quick $(BENCH_ARGS)

# Speedup vs K=0 at added round-trip times of 0, 1, 5, 20 ms on both links (~15 min here).
bench-rtt: install
	$(PY) -m bench.rtt $(BENCH_ARGS)

# Aggregate tokens/s and latency for 1..16 concurrent sessions, K=0, K=4 and adaptive K <= 8.
bench-concurrency: install
	for pair in $(PAIRS); do $(PY) -m bench.concurrency --pair $$pair || exit 1; done

# One-shot GPU benchmark (~3 min on one H200): per-step costs of 7B- and 0.5B-shaped bf16
# models in the engine, Hugging Face generate, expected speedups, draft == target end to end.
# On a machine without network: bench/gpu-wheels.sh first (see docs/benchmarks.md).
bench-gpu: install
	$(PY) -m bench.gpu --out results/bench-gpu $(BENCH_ARGS)

# What a round costs besides the forward passes (coordinator, gRPC, servicers), tiny pair,
# 1 and 8 sessions, K = 0/1/4/8, lockstep and pipelined, OpenMP wait policies (~10 min here).
bench-overhead: install
	$(PY) -m bench.overhead $(BENCH_ARGS)

# Drafting in turns vs drafting ahead (--draft-ahead), shared CPUs vs pinned one core each,
# side by side (~8 min here).
bench-pipeline: install
	$(PY) -m bench.pipeline $(BENCH_ARGS)

# llama.cpp's binaries for `python -m bench.run --llama-cpp` (~15 min build; not for CI).
llama-cpp: install
	PYTHON=$(PY) bench/get-llama-cpp.sh

# The containerised stack (compose.yaml: draft on GPU 0, target on GPU 1); CPU=1 for the
# CPU override. Needs a Docker engine with Compose v2.24+.
up:
	$(COMPOSE) up -d --build --wait

down:
	$(COMPOSE) down
