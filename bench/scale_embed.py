"""Scale-out embedding: the local engine beside Ray with 1 and 2 workers, in one run.

One run, real records (pretrain_corpus_sample2k.fasta by default), the same model, config and
shards (`--read-ahead` residues each) for every engine, no store (every vector computed):
1. local: `embed_fasta_file` in this process (torch's threads: all cores), after a warm-up forward;
2. Ray, started once in this process with every core: 1 worker holding all cores, then as many
   workers as cores, one core each (the most this machine can show); each run's time includes
   planning the shards, starting the actor pool, loading the model in each actor and writing parts;
3. Ray's overhead on one worker: 1 - (its res/s / the local res/s), and the vectors of every run
   checked equal to the local ones.
The load average is printed beside each run: other work on the machine slows every figure.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from protssl.checkpoint import LoadedModel, load_model
from protssl.dtypes import DTypeName, check_dtype_name
from protssl.embed_file import JobSummary, embed_fasta_file
from protssl.embedding import EmbedConfig, embed_records
from protssl.errors import ModelNotFoundError
from protssl.fasta import read_fasta
from protssl.info import describe
from protssl.output import read_vectors
from protssl.ray_embed import RayOptions, embed_fasta_ray

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/pretrain/pretrain_corpus_sample2k.fasta"
)
log = logging.getLogger("bench.scale_embed")


def pick_model(spec: str | None, dtype: DTypeName) -> tuple[LoadedModel, str | None]:
    """The named model, else the shipped default, else random-weight esm2-8m; and its spec."""
    if spec is not None:
        return load_model(spec, dtype=dtype), spec
    try:
        return load_model(None, dtype=dtype), None
    except ModelNotFoundError:
        log.warning("no shipped default model yet: using random-weight esm2-8m")
        return load_model("esm2-8m", dtype=dtype), "esm2-8m"


def first_records(source: Path, limit: int, folder: Path) -> Path:
    """The first `limit` records of `source` as a file of their own (0: `source` itself)."""
    if limit <= 0:
        return source
    chunks = source.read_text().split(">")[1 : limit + 1]
    path = folder / "input.fasta"
    path.write_text("".join(">" + c for c in chunks))
    return path


def figures(name: str, summary: JobSummary, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    load = os.getloadavg()[0]
    row = {
        "records": summary.records,
        "residues": summary.residues,
        "seconds": round(summary.seconds, 2),
        "res_per_s": round(summary.residues_per_second, 1),
        "load_avg_1m_after": round(load, 2),
        **(extra or {}),
    }
    print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--limit", type=int, default=0, help="first N records (0 = all)")
    parser.add_argument("--model", default=None, help="model (default: the shipped model)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or int8")
    parser.add_argument(
        "--read-ahead", type=int, default=100_000, help="residues per shard (default 100000)"
    )
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="cores Ray may use (default: all)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    model, spec = pick_model(args.model, check_dtype_name(args.dtype))
    config = EmbedConfig(read_ahead_residues=args.read_ahead)
    result: dict[str, Any] = {
        "bench": "scale_embed",
        "model": model.name,
        "dtype": model.dtype_name,
        "read_ahead_residues": args.read_ahead,
        "cores": args.cores,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fasta = first_records(args.fasta, args.limit, folder)
        warm = list(itertools.islice(read_fasta(fasta), 16))
        list(embed_records(warm, model, config))  # as each actor's first shard warms its model
        local = embed_fasta_file(fasta, folder / "local.h5", model, config=config, progress=False)
        result["local"] = figures("local", local)
        expected = {key: vector for key, vector, _ in read_vectors(folder / "local.h5")}

        start = time.perf_counter()
        ray.init(
            num_cpus=args.cores,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        result["ray_init_s"] = round(time.perf_counter() - start, 2)
        try:
            pools = [(1, args.cores)]
            if args.cores > 1:
                pools.append((args.cores, 1))
            for workers, cpus in pools:
                out = folder / f"ray{workers}"
                options = RayOptions(workers=workers, cpus_per_worker=cpus)
                summary = embed_fasta_ray(
                    fasta,
                    out,
                    model,
                    model_spec=spec,
                    config=config,
                    options=options,
                    progress=False,
                )
                identical = all(
                    np.array_equal(vector, expected[key]) for key, vector, _ in read_vectors(out)
                )
                extra = {"workers": workers, "cpus_per_worker": cpus, "identical": identical}
                result[f"ray_{workers}_workers"] = figures(f"ray x{workers}", summary, extra)
        finally:
            ray.shutdown()
    one = result["ray_1_workers"]["res_per_s"]
    result["ray_1_worker_vs_local"] = round(one / result["local"]["res_per_s"], 3)
    result["ray_1_worker_overhead"] = round(1 - result["ray_1_worker_vs_local"], 3)
    if args.cores > 1:
        many = result[f"ray_{args.cores}_workers"]["res_per_s"]
        result["ray_scaling_1_to_n"] = round(many / one, 3)
    result["machine"] = describe()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
