# Project tasks. `make venv` builds .venv from scratch; the other targets use it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# CPU-only torch, installed before the package when there is no CUDA (no
# nvidia-smi): otherwise pip resolves `torch>=2.4` to the newest torch with
# several GB of CUDA wheels. Override e.g. with
#   make venv TORCH_CPU='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH_CPU ?= torch==2.13.0
# extra flags for the demo, e.g. make demo DEMO_ARGS="--epochs 3 --variants nn.Conv2d,adder"
DEMO_ARGS ?=

.PHONY: venv test demo bench docs clean distclean

venv: $(VENV)/.stamp

# triton is optional (tests skip its backend without it) and only has wheels
# for Linux x86_64, so it gets its own pip call whose failure is tolerated.
$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install $(TORCH_CPU); fi
	$(PIP) install -e '.[test,demo]'
	if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  $(PIP) install -e '.[triton]' || echo "triton not installed"; \
	fi
	touch $@

test: venv
	$(PY) -m pytest -q -n 2 tests

demo: venv
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: venv
	$(PY) -m lambdaconv.bench --quick

# docs/api.md from the docstrings (tests/test_docs.py fails when it is stale)
docs: venv
	$(PY) docs/gen_api.py

# Build artefacts, caches and demo outputs; `make distclean` also drops .venv.
clean:
	rm -rf build dist src/*.egg-info .pytest_cache .hypothesis .lambdaconv_cache examples/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
