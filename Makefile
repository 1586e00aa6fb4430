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

# The suite's processes (pytest workers and the programs tests start) share one persistent compilation cache for the
# run: the same micro models compile in many tests. It starts empty every run, so no result outlives it.
test: $(STAMP)
	cache=$$(mktemp -d) && JAX_COMPILATION_CACHE_DIR=$$cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1 \
	  $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS); status=$$?; rm -rf $$cache; exit $$status

# The main job on a fresh machine: the training quickstart (audioldm2_jax/quickstart/). Shared tokenizers
# and frozen text encoders, the six training stages at tiny size on the built-in procedural dataset (two at a time),
# sampling prompts of the dataset's grammar from the result, and a prompt-following report (pitch class, instrument
# family, onset rate) with wall times and loss curves. Run it again to resume an interrupted job.
QUICKSTART ?= runs/quickstart
quickstart: $(STAMP)
	$(PY) -m audioldm2_jax.quickstart --root $(QUICKSTART)
	@echo "quickstart outputs: $(QUICKSTART)/report.md and report.json (prompt following, timings),"
	@echo "  $(QUICKSTART)/samples/ (WAV + spectrogram PNG + JSON per clip), $(QUICKSTART)/loss_<stage>.png;"
	@echo "  the trained model: $(QUICKSTART)/joint/export (python sample.py --checkpoint $(QUICKSTART)/joint/export ...)"

clean:
	rm -rf $(VENV) .pytest_cache runs
