# Two commands do all the set-up:
#   make reproduce   # the whole pipeline at the smoke profile (PROFILE=offline|paper to choose)
#   make test        # unit tests + notebooks under nbval at the smoke profile
# Both create or refresh .venv themselves; nothing is reinstalled when nothing changed.

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= smoke
# The CPU build is enough for the smoke and offline profiles; choose another build with
#   make TORCH="torch==2.14.1" reproduce
TORCH   ?= torch==2.13.0
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.emprl-installed

.PHONY: reproduce test browser-test llm-test venv clean-outputs bundle

venv: $(STAMP)

# Every other package at the version of requirements-lock.txt (constraints: the environment the offline
# outputs are rendered in; results are bit-identical within one environment only). Unpinned: make LOCK= test
LOCK    ?= requirements-lock.txt
PIP_C   := $(if $(LOCK),-c $(LOCK))

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q $(PIP_C) -e ".[test]"
	@touch $@

reproduce: $(STAMP)
	$(PY) -m emprl.ops.pipeline --profile $(PROFILE)

# Notebooks run under nbval into a temporary output folder, in order (02 trains what 04 needs), on the
# bundled smoke sample whether or not EMPRL_DATA_DIR is set: their checked cells store its results.
# Without an LLM endpoint too: those results have no LLM row, and a configured server may be down.
test: $(STAMP)
	$(PY) -m pytest -q -m "not browser and not llm_server" tests
	env -u EMPRL_DATA_DIR -u EMPRL_LLM_URL -u EMPRL_LLM_MODEL -u EMPRL_LLM_API_KEY \
		EMPRL_OUTPUT_DIR=$${EMPRL_OUTPUT_DIR:-$$(mktemp -d)} MPLBACKEND=Agg \
		$(PY) -m pytest -q --nbval-lax -p no:cacheprovider notebooks

# A self-contained folder for an air-gapped GPU machine (see docs/device-and-bundle.md); needs EMPRL_DATA_DIR.
BUNDLE ?= bundle
bundle: $(STAMP)
	$(PY) -m emprl.ops.bundle $(BUNDLE)

# The playground in JupyterLab driven by the system's Chromium (docs/playground.md).
browser-test: $(STAMP)
	$(PY) -m pip install -q $(PIP_C) -e ".[browser]"
	$(PY) -m pytest -q -m browser tests/browser

# The LLM baseline against the real local server (docs/evaluation-and-llm.md: "A local LLM"); builds llama-cpp-python once.
llm-test: $(STAMP)
	$(PY) -m pip install -q $(PIP_C) -e ".[llm]"
	$(PY) -m emprl.download --llm smollm2
	$(PY) -m pytest -q -m llm_server tests/llm

clean-outputs:
	rm -rf outputs/$(PROFILE)
