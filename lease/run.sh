#!/usr/bin/env bash
# Runs on a lent GPU machine (the device tool), in a copy of this repository with .lease/ carried:
#   bash lease/run.sh SECONDS [pretrain-lease options]   (SECONDS: the budget, e.g. 420 of a 600 s call)
# Installs the carried wheels, runs `protssl pretrain-lease` on the carried corpus, and leaves the
# model in $OUT in parts of < 16 MiB (what the device tool brings back); `make lease-unpack` joins them.
set -euo pipefail
seconds="${1:?usage: lease/run.sh SECONDS}"
out="${OUT:?OUT is set by the device tool}"
export PYTHONPATH="$PWD:/tmp/lease-site"
python3 -c "import Bio, sqlalchemy, alembic, esm, platformdirs" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --target /tmp/lease-site .lease/wheels/*.whl
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; } | tee "$out/gpu.txt"
python3 -m protssl pretrain-lease .lease/pretrain_corpus.fasta.gz --seconds "$seconds" \
    --run-dir /tmp/lease-run --no-progress "${@:2}" 2>&1 | tee "$out/lease.log"
model=/tmp/lease-run/model
cp "$model/model.json" /tmp/lease-run/log.csv "$out/"
cp /tmp/lease-run/loss_curve.png "$out/" || true
split -b 15m -d "$model/model.safetensors" "$out/model.safetensors.part"
