# protssl — `make demo` and `make test` set everything up from a clean checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench proto clean lease-pack lease-unpack

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: the CPU build; an open range would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,postgres,bench,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m protssl.demo

# Two pytest-xdist workers, one test file each at a time: much of the suite waits on servers and
# subprocesses, so two cores finish it in 60-75% of the serial time. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy protssl service bench

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

# A GPU lease (README "Spending a GPU lease"): pack here, run lease/run.sh there, unpack here.
SHARED ?= ../shared
LEASE_WHEELS := biopython sqlalchemy alembic mako platformdirs fair-esm
lease-pack: $(STAMP)
	mkdir -p .lease/wheels
	gzip -c $(SHARED)/data/pretrain/pretrain_corpus.fasta > .lease/pretrain_corpus.fasta.gz
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .lease/wheels $(LEASE_WHEELS)

# FROM: the folder the device tool brought back; TO: the candidate model folder.
TO ?= runs/lease-model
lease-unpack: $(STAMP)
	test -n "$(FROM)" || (echo "usage: make lease-unpack FROM=<files_at> [TO=$(TO)]" && exit 2)
	mkdir -p $(TO)
	cat $(FROM)/model.safetensors.part* > $(TO)/model.safetensors
	cp $(FROM)/model.json $(TO)/
	$(PY) -c "import protssl, sys; print(protssl.load_model(sys.argv[1]).card.name, 'loads')" $(TO)

clean:
	rm -rf $(VENV) build dist *.egg-info
