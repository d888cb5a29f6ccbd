# Every target does its own set-up on a fresh machine: venv, the CPU torch wheel, the project
# (editable, with its C++ extension) and the test/demo dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this version lies on local disk here; an unpinned torch pulls a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: test test-st62 demo bench docs setup ext system-deps clean cuda-build gpu-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel ninja

# --no-build-isolation: set up against the torch installed here, not a fresh download. EMBEDPLUG_NO_EXT=1:
# the editable install only registers the package; `make ext` compiles embedplug._C, once. (An editable
# install compiles it in a throw-away folder, so `make ext` after it would compile everything a second time.)
$(VENV)/.deps-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
	EMBEDPLUG_NO_EXT=1 $(BIN)/python -m pip install --no-build-isolation -e ".[test]"
	touch $@

setup: $(VENV)/.deps-installed

# Builds embedplug._C in place, its objects kept in build/: the first run compiles everything, later runs
# only what changed since (setuptools skips the step when no csrc/ source or header is newer than the .so;
# ninja recompiles only the objects whose sources or included headers changed).
ext: setup
	$(BIN)/python setup.py --quiet build_ext --inplace

# Debian packages the demo reads at run time (WordNet); installed when missing and apt is usable.
system-deps:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base; \
	  else echo "WordNet missing: run 'sudo apt-get install -y wordnet-base'"; exit 1; fi; \
	fi

# The sentence-transformers parity tests once more, against 6.2 (the main environment gets the newest
# release the pins allow, 6.3): a second, small environment with the same torch, so the in-place
# embedplug/_C*.so that `ext` built loads there too and nothing is compiled again. `make test` runs
# both; the 6.2 run costs about 80 s of set-up the first time, then about 3 min of tests on 2 cores.
ST62_VENV ?= .venv-st62
ST62_TESTS ?= tests/losses tests/distributed tests/mining tests/test_st_version.py tests/test_drop_in_surface.py
ST62_PYTEST_ARGS ?=

$(ST62_VENV)/.deps-installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(ST62_VENV)
	$(ST62_VENV)/bin/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
	$(ST62_VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	EMBEDPLUG_NO_EXT=1 $(ST62_VENV)/bin/python -m pip install --quiet --no-build-isolation -e ".[test]" \
	  "sentence-transformers[train]==6.2.*"
	touch $@

define run_st62_parity_tests
	$(ST62_VENV)/bin/python -c "import embedplug._extension as e, sentence_transformers as st; \
	  assert e.STATUS.loaded, e.STATUS.reason; print('parity tests on sentence-transformers', st.__version__)"
	$(ST62_VENV)/bin/python -m pytest -p no:cacheprovider $(ST62_TESTS) $(ST62_PYTEST_ARGS)
endef

test: ext $(ST62_VENV)/.deps-installed
	$(BIN)/python -m embedplug doctor
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(run_st62_parity_tests)

test-st62: ext $(ST62_VENV)/.deps-installed
	$(run_st62_parity_tests)

bench: ext
	mkdir -p bench-results
	$(BIN)/python -m pytest benchmarks -p no:cacheprovider --benchmark-enable --benchmark-only --benchmark-columns=median,min,max,rounds --benchmark-json=bench-results/benchmarks.json $(PYTEST_ARGS)

demo: ext system-deps
	HF_HUB_OFFLINE=1 $(BIN)/embedplug train configs/demo-reverse-dictionary.toml --overwrite

# The documentation site: docs/ and the API reference generated from the docstrings (mkdocs.yml), into
# site/. --strict fails on any warning: a broken link or anchor, an unresolved reference, a docstring
# griffe cannot parse, a public object without a docstring. The packages are pyproject.toml's `docs`
# extra, installed by name so that the editable install (and its extension) is left alone.
$(VENV)/.docs-installed: pyproject.toml | $(VENV)/.deps-installed
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))' > $(VENV)/docs-requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/docs-requirements.txt
	touch $@

docs: setup $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# CUDA build check (no GPU needed): a second environment with a CUDA 13.0 build of torch (from local
# disk, ~5.5 GB), the extension compiled with nvcc for sm_80 and sm_90 into $(CUDA_BUILD_DIR) (never in
# place, where it would replace the CPU build), imported, and every op of csrc/embedplug.cpp checked
# for a registered CPU and CUDA kernel.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_VERSION ?= 2.14.1
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH_LIST ?= 8.0;9.0
CUDA_BUILD_DIR ?= build-cuda

$(CUDA_VENV)/.deps-installed:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel ninja
	$(CUDA_VENV)/bin/python -m pip install --quiet "torch==$(CUDA_TORCH_VERSION)" numpy
	touch $@

# CPATH: the cuBLAS/cuSPARSE headers ATen's CUDA headers include come with torch's pip packages.
cuda-build: $(CUDA_VENV)/.deps-installed
	@test -x "$(CUDA_HOME)/bin/nvcc" || { echo "cuda-build: no nvcc under CUDA_HOME=$(CUDA_HOME)"; exit 1; }
	CPATH="$$($(CUDA_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"] + "/nvidia/cu13/include")')" \
	  CUDA_HOME="$(CUDA_HOME)" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)" \
	  $(CUDA_VENV)/bin/python setup.py build_ext --build-lib $(CUDA_BUILD_DIR)/lib --build-temp $(CUDA_BUILD_DIR)/temp
	$(CUDA_VENV)/bin/python scripts/check_kernels.py --library "$$(ls $(CUDA_BUILD_DIR)/lib/embedplug/_C*.so)" \
	  --dispatch-key CPU --dispatch-key CUDA

# Wheels the GPU check installs on a machine without network (scripts/gpu-check.sh): the test packages
# and the pinned sentence-transformers with their pure-Python dependencies, at the versions tested here,
# for that machine's Python 3.12. torch, numpy and scipy are the GPU machine's own.
GPU_WHEELS ?= gpu-wheels
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEEL_PACKAGES := sentence-transformers transformers huggingface[-_]hub tokenizers safetensors hf-xet httpx2 \
  httpcore2 h11 anyio idna click typer shellingham rich markdown-it-py mdurl pygments regex pyyaml tqdm filelock \
  fsspec packaging typing[-_]extensions typing-inspection annotated-doc pytest iniconfig pluggy hypothesis \
  sortedcontainers expecttest
gpu-wheels: setup
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip freeze | grep -i -E "^($(shell echo $(GPU_WHEEL_PACKAGES) | tr ' ' '|'))==" > $(GPU_WHEELS)/requirements.txt
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --abi cp$(subst .,,$(GPU_PYTHON_VERSION)) --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
	@echo "$$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels in $(GPU_WHEELS)/ ($$(du -sh $(GPU_WHEELS) | cut -f1))"

clean:
	rm -rf build site $(CUDA_BUILD_DIR) embedplug/_C*.so
