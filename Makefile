# `make test` on a fresh machine: creates .venv, installs the project with its test extra, runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test install quickstart clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# timm (AudioMAE's reference blocks) without its torchvision: PyPI's torchvision wheels are CUDA builds that
	# fail to load against the CPU torch and then break every transformers import.
	$(PY) -m pip install -q --no-deps 'timm>=1.0'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache runs
