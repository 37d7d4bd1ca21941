# specdec: `make demo` (set up + run the three services + generate), `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# On a CPU-only machine without a local CPU wheel, point this at PyTorch's CPU wheel index
# (otherwise pip takes the CUDA build): make install TORCH_INDEX_URL=...
TORCH_INDEX_URL ?=
DTYPE ?= bfloat16
K ?= 4
MAX_NEW_TOKENS ?= 128
TEMPERATURE ?= 0
TOP_K ?= 0
TOP_P ?= 1.0
SEED ?= 0
PROBLEMS ?= 1
PROTOS := $(wildcard protos/specdec/v1/*.proto)

.PHONY: install proto test run demo models lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

proto: install
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

test: install
	$(PY) -m pytest -q

models: install
	$(PY) -m specdec.fetch qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct

run: install
	$(PY) -m tools.run_local --dtype $(DTYPE)

demo: install
	$(PY) -m tools.demo --dtype $(DTYPE) --k $(K) --max-new-tokens $(MAX_NEW_TOKENS) \
		--temperature $(TEMPERATURE) --top-k $(TOP_K) --top-p $(TOP_P) --seed $(SEED) \
		--problems $(PROBLEMS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) results .pytest_cache
