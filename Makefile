# The two commands of the README: `make serve` and `make test`. Each sets up .venv on first use
# (torch pinned and installed first, so pip never resolves a different, multi-GB build) and
# reuses it afterwards; editing pyproject.toml triggers a re-install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdatlas-installed
TORCH_SPEC ?= torch==2.13.0
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

.PHONY: setup test lint serve docs validate leaderboard claims bench bench-fresh bench-fused bench-blackbox parity clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[docs,test]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(PY) -m ruff check kdatlas reference_impls tests benchmarks docs

validate: setup
	$(VENV)/bin/kdatlas validate
	$(VENV)/bin/kdatlas schema --check

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: lint validate
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	exit $$status

docs: setup
	$(VENV)/bin/kdatlas docs build

serve: setup
	$(VENV)/bin/kdatlas docs serve

bench: setup
	$(PY) benchmarks/run_times.py

leaderboard: setup  # every method x 3 seeds, cached cells reused -> benchmarks/results/leaderboard.json (~1 h on 2 cores from scratch)
	$(VENV)/bin/kdatlas bench --seeds 3
	$(VENV)/bin/kdatlas bench --seeds 3 --student-family gpt2 --methods vanilla-kd,seqkd,minillm,generalized-jsd

claims: setup  # the claims' experiments (board cells reused) -> benchmarks/results/claims.json
	$(VENV)/bin/kdatlas claims --run

bench-fresh: setup  # a new user's first `kdatlas run alpaca` and `kdatlas run forward-kl`, empty cache (~2 min)
	PYTHONPATH=. $(PY) benchmarks/fresh_machine.py --write

bench-blackbox: setup  # every black-box pipeline: default run first and cached, ablations, larger budget, seeds (~20 min on 2 cores)
	PYTHONPATH=. $(PY) benchmarks/blackbox_runs.py --write

# A refactor keeps every number: every method at a small fixed budget, compared exactly with the
# snapshot (write a fresh one on the old code first if the machine differs: PARITY=/tmp/before.json).
PARITY ?= benchmarks/results/parity.json
parity: setup  # ~1 minute
	PYTHONPATH=. $(PY) benchmarks/parity.py --check $(PARITY)

bench-fused: setup  # fused vs naive distillation loss, CPU (~5 min); on a GPU: benchmarks/fused_loss_gpu.sh
	PYTHONPATH=. $(PY) benchmarks/fused_loss.py

clean:
	rm -rf site runs .pytest_cache .ruff_cache
