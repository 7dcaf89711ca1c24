# The two newcomer commands are `make demo` and `make test`; each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the main job offline against the bundled emulator (today's ImmPort)
	$(PY) -m immsync.demo --workdir demo-run

test: $(STAMP)  ## the default test suite, then the type and lint checks
	$(PY) -m pytest
	$(PY) -m mypy
	$(PY) -m ruff check immsync tests

test-slow: $(STAMP)  ## stress tests (crash trials, large files)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # 5: no slow test selected

bench: $(STAMP)  ## every benchmark of issue 5 (about 10 min); writes BENCHMARKS.md
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)  ## the same benchmarks at tiny sizes (well under a minute)
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) demo-run .pytest_cache .mypy_cache .ruff_cache
