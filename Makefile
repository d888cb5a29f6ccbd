# Every target does its own set-up on a fresh machine: venv, the CPU torch wheel, the project
# (editable, with its C++ extension) and the test/demo dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this version lies on local disk here; an unpinned torch pulls a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: test demo bench setup ext system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel ninja

# --no-build-isolation: build the extension against the torch installed here, not a fresh download.
$(VENV)/.deps-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --no-build-isolation -e ".[test]"
	touch $@

setup: $(VENV)/.deps-installed

# Incremental rebuild of embedplug._C in place (ninja only recompiles what changed).
ext: setup
	$(BIN)/python setup.py --quiet build_ext --inplace

# Debian packages the demo reads at run time (WordNet); installed when missing and apt is usable.
system-deps:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base; \
	  else echo "WordNet missing: run 'sudo apt-get install -y wordnet-base'"; exit 1; fi; \
	fi

test: ext
	$(BIN)/python -m embedplug doctor
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: ext
	mkdir -p bench-results
	$(BIN)/python -m pytest benchmarks -p no:cacheprovider --benchmark-enable --benchmark-only --benchmark-columns=median,min,max,rounds --benchmark-json=bench-results/benchmarks.json $(PYTEST_ARGS)

demo: ext system-deps
	HF_HUB_OFFLINE=1 $(BIN)/embedplug train configs/demo-reverse-dictionary.toml --overwrite

clean:
	rm -rf build embedplug/_C*.so
