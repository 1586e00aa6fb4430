# `make test` on a fresh machine: creates .venv, installs the project with its test extra, runs the suite.
# `make quickstart` installs the project alone (no test extra: no torch, diffusers), with a stamp of its own.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
QUICKSTART_STAMP := $(VENV)/.quickstart-stamp
PYTEST_ARGS ?=

.PHONY: test install install-quickstart quickstart clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# timm (AudioMAE's reference blocks) without its torchvision: PyPI's torchvision wheels are CUDA builds that
	# fail to load against the CPU torch and then break every transformers import.
	$(PY) -m pip install -q --no-deps 'timm>=1.0'
	touch $(STAMP)

install: $(STAMP)

# What the quickstart runs, and nothing else: the project's own dependencies (jax, flax, transformers' tokenizers...).
$(QUICKSTART_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(QUICKSTART_STAMP)

install-quickstart: $(QUICKSTART_STAMP)

# The suite's processes (pytest workers and the programs tests start) share one persistent compilation cache for the
# run: the same micro models compile in many tests. It starts empty every run, so no result outlives it.
test: $(STAMP)
	cache=$$(mktemp -d) && JAX_COMPILATION_CACHE_DIR=$$cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1 \
	  $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS); status=$$?; rm -rf $$cache; exit $$status

# The main job on a fresh machine: the training quickstart (audioldm2_jax/quickstart/). Shared tokenizers
# and frozen text encoders, the six training stages at tiny size on the built-in procedural dataset (two at a time),
# sampling prompts of the dataset's grammar from the result, and a prompt-following report (pitch class, instrument
# family, tempo, each beside its shuffled-prompt and best-constant baselines; a spectrogram grid and a listening
# list) with wall times and loss curves. Run it again to resume an interrupted job.
QUICKSTART ?= runs/quickstart
quickstart: $(QUICKSTART_STAMP)
	$(PY) -m audioldm2_jax.quickstart --root $(QUICKSTART)
	@echo "quickstart outputs: $(QUICKSTART)/report.md and report.json (prompt following, timings),"
	@echo "  $(QUICKSTART)/spectrograms.png (true vs generated) and $(QUICKSTART)/true/ (true clips to listen to),"
	@echo "  $(QUICKSTART)/samples/ (WAV + spectrogram PNG + JSON per clip; samples_true_loa/ the same from the true"
	@echo "  clips' LOA instead of GPT-2's), $(QUICKSTART)/loss_<stage>.png;"
	@echo "  the trained model: $(QUICKSTART)/joint/export (python sample.py --checkpoint $(QUICKSTART)/joint/export ...)"

clean:
	rm -rf $(VENV) .pytest_cache runs

# A scaling-law demo on the CPU (audioldm2_jax/scaling/, docs/scaling.md): an isoFLOP sweep of 3 compute budgets x 3
# UNet widths of the quickstart's LDM on the procedural dataset, the held-out loss of each run, both fits (isoFLOP
# parabolas, the parametric L(N, D)), figures and report.md. Run it again to resume.
SCALING_DEMO ?= runs/scaling-demo
.PHONY: scaling-demo
scaling-demo: $(QUICKSTART_STAMP)
	$(PY) -m audioldm2_jax.scaling demo --root $(SCALING_DEMO)
	@echo "scaling demo outputs: $(SCALING_DEMO)/demo/report.md, results.csv / results.json, *.png"
