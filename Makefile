# Every target sets itself up from a fresh clone with only python3 on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint bench fuzz demo wheel clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check bce_cli tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/as_avx2.py benchmarks/bench.py --skip-startup
	$(BIN)/python benchmarks/bench_e2e.py --data .bench-data --from-wheel
	$(BIN)/python benchmarks/bench_stats.py --data .bench-data
	$(BIN)/python benchmarks/bench_compile.py

# Malformed and adversarial inputs through the command line for FUZZ_SECONDS (failures are
# kept in .fuzz-failures/); tests/test_fuzz.py runs a fixed handful of cases in `make test`.
FUZZ_SECONDS ?= 120
fuzz: install
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS)

# The main job on the bundled sample data: class counts and pos_weight, then the evaluation.
demo: install
	$(BIN)/bce suggest-pos-weight sample_data/digits_labels.parquet
	$(BIN)/bce eval sample_data/digits_preds.parquet sample_data/digits_labels.parquet --max-loss 0.35

# The release wheel: every kernel form compiled ahead for x86-64-v3 and v4 and shipped in it
# (bce_cli/_wheel.py; about 3 minutes on 2 cores), so a fresh machine compiles nothing.
# (build/ goes first: setuptools would ship a module deleted since from its copy there.)
wheel: install
	rm -rf build
	BCE_PREBUILT=all $(BIN)/python -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .fuzz-failures
