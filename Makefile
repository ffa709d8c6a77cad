# protssl — `make demo` and `make test` set everything up from a clean checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench proto clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: the CPU build; an open range would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,postgres,bench,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m protssl.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy protssl service

proto: $(STAMP)
	$(PY) proto/generate.py

# The few-shot benches compare with MMseqs2 when `mmseqs` is on PATH and say so when it is not;
# they install nothing: get it with `apt-get install mmseqs2` (Debian/Ubuntu) or conda's bioconda.
bench: $(STAMP)
	$(PY) bench/embed_throughput.py --preset esm2-8m
	$(PY) bench/embed_throughput.py --preset esm2-35m
	$(PY) bench/store_throughput.py
	@command -v mmseqs >/dev/null || echo "NOTE: mmseqs not on PATH: no MMseqs2 rows (apt-get install mmseqs2)"
	OMP_NUM_THREADS=1 $(PY) bench/fewshot_quality.py
	$(PY) bench/hybrid_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info
