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

# The main job on a fresh machine. Until the training quickstart lands (issue: training), it runs the inference
# path end to end: a tiny random-weight AudioLDM 2 checkpoint built locally in the diffusers layout (tokenizers
# included), then sample.py on prompts of the built-in procedural dataset -> WAV + spectrogram PNG + JSON per clip.
QUICKSTART ?= runs/quickstart
quickstart: $(STAMP)
	mkdir -p $(QUICKSTART)
	$(PY) tests/pipeline_fixtures.py $(QUICKSTART)/checkpoint
	$(PY) -m audioldm2_jax.data.procedural --count 8 > $(QUICKSTART)/prompts.txt
	$(PY) sample.py --checkpoint $(QUICKSTART)/checkpoint --prompts-file $(QUICKSTART)/prompts.txt \
		--duration 1.28 --steps 20 --scheduler dpmsolver++ --out $(QUICKSTART)/samples

clean:
	rm -rf $(VENV) .pytest_cache runs
