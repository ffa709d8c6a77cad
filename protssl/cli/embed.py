"""`protssl embed`: a FASTA file into HDF5, .npz or a TSV/CSV table, through the store's cache.

With the store, the run is a job in its `jobs` table: run again with the same arguments after a
kill, it continues where it stopped. Prints the job's summary as the last line of stdout (JSON)
however it ends: also when a FASTA error stops it, or an option, the input or OUTPUT is refused
before any work. An input without records, or whose every record the FASTA
policy skipped, is a user error (exit 2): nothing is written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from protssl.cli.args import (
    add_fasta_policy_args,
    add_model_args,
    add_server_args,
    add_store_args,
    as_options,
    fasta_policy,
    finite_number,
    given_options,
    load_model,
    open_store,
    refuse_beside_server,
    served_model,
    server_client,
)
from protssl.cli.commands import Command
from protssl.errors import InvalidInputError, ProtsslError, first_line
from protssl.pooling import POOLINGS, SEGMENTS

if TYPE_CHECKING:
    from protssl.checkpoint import LoadedModel
    from protssl.embed_file import JobSummary
    from protssl.embedding import EmbedConfig
    from protssl.fasta import FastaPolicy
    from protssl.store import Store

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="FASTA file, .gz, or - for stdin")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="OUT.h5 (or .hdf5, .npz; .tsv or .csv: a table, one pooled vector a row); with --engine ray a folder of part-NNNNN.h5 files",
    )
    add_model_args(parser)
    parser.add_argument(
        "--pooling",
        default="mean",
        choices=POOLINGS,
        help=f"default: mean; segments: the means of {SEGMENTS} equal stretches, end to end",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="layer to read (negative counts back; default: the model card's recommended layer, "
        "else the last)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=4096, help="token budget per batch (default 4096)"
    )
    parser.add_argument(
        "--window-policy",
        default="window",
        choices=("window", "refuse"),
        help="sequences longer than the model window: window (overlap + average) or refuse",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="window overlap in residues (default 256, or a quarter of a model window under 512)",
    )
    parser.add_argument(
        "--read-ahead",
        type=int,
        default=500_000,
        metavar="RESIDUES",
        help="residues read and length-sorted together; one shard of --engine ray (default 500000)",
    )
    add_fasta_policy_args(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep OUTPUT's vectors and those a killed run left in OUTPUT.partial/, and skip "
        "their ids (implied when the store holds this job unfinished)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (not with --resume)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_store_args(parser)
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this process; ray: shards across a Ray actor pool (extra: protssl[ray])",
    )
    engine.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="Ray cluster to join (host:6379 or auto); default: start Ray in this process",
    )
    engine.add_argument(
        "--workers", type=int, default=1, metavar="N", help="Ray actors, one model each (default 1)"
    )
    engine.add_argument(
        "--cpus-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="CPUs (torch threads) per actor (default 1)",
    )
    engine.add_argument(
        "--gpus-per-worker",
        type=finite_number,
        default=0.0,
        metavar="N",
        help="GPUs per actor (default 0: CPU)",
    )
    engine.add_argument(
        "--worker-retries",
        type=int,
        default=3,
        metavar="N",
        help="times a dead actor (node lost, OOM kill) is restarted and its shard retried (default 3)",
    )
    add_server_args(parser, "embed")
    parser.set_defaults(func=_embed)


_RAY_ONLY = ("ray_address", "workers", "cpus_per_worker", "gpus_per_worker", "worker_retries")
"""The engine group's options that only `--engine ray` reads."""

_LOCAL_ONLY = (
    "dtype",
    "device",
    "trust_pickle",
    "allow_sha256",
    "max_tokens",
    "window_policy",
    "overlap",
    "read_ahead",
    "db",
    "no_cache",
    "engine",
    "ray_address",
    "workers",
    "cpus_per_worker",
    "gpus_per_worker",
    "worker_retries",
)
"""What a server decides for itself: options that are refused beside --server."""


COMMANDS = (
    Command(
        "embed",
        _build,
        help="embed a FASTA file into HDF5 (.h5), .npz or a TSV/CSV table",
        description="Embed every record of a FASTA file (.gz or - for stdin) into OUTPUT.",
    ),
)


def _embed(args: argparse.Namespace) -> int:
    """The command, its JSON summary printed last on stdout however it ends: also when an
    option, the input or OUTPUT is refused before any work."""
    from protssl.embed_file import JobSummary

    summary = JobSummary(output=args.output)
    try:
        return _embed_into(args, summary)
    except BaseException as exc:
        _note_error(summary, exc)
        raise
    finally:
        _print_summary(summary)


def _embed_into(args: argparse.Namespace, summary: JobSummary) -> int:
    """Check the options, the input and OUTPUT, then run the job (here, on Ray or on a server),
    its counts kept in `summary`."""
    from protssl.batch_job import JobRun
    from protssl.batching import WindowPolicy
    from protssl.durable import check_not_the_input
    from protssl.embed_file import embed_fasta_file, embed_job_spec
    from protssl.embedding import EmbedConfig
    from protssl.fasta import validate_fasta
    from protssl.output import (
        check_not_being_written,
        check_output,
        check_parts_folder,
        check_parts_output,
        check_pooling,
        check_resume_or_overwrite,
        check_writable,
    )

    config = EmbedConfig(
        pooling=args.pooling,
        layer=args.layer,
        max_tokens=args.max_tokens,
        window=WindowPolicy(mode=args.window_policy, overlap=args.overlap),
        read_ahead_residues=args.read_ahead,
    )
    check_resume_or_overwrite(resume=args.resume, overwrite=args.overwrite)
    policy = fasta_policy(args)
    if args.input != "-" and Path(args.input).is_dir():
        raise InvalidInputError(f"{args.input}: is a folder, not a FASTA file")
    if args.input != "-" and not Path(args.input).is_file():
        raise InvalidInputError(f"{args.input}: no such file")
    check_not_the_input(Path(args.output), args.input)
    if args.server is not None:
        return _embed_remote(args, policy, summary)
    refuse_beside_server(args, _build, _LOCAL_ONLY)  # --server-ca alone
    if args.engine == "local":
        if ray_options := given_options(args, _build, _RAY_ONLY):
            raise InvalidInputError(f"{ray_options}: go with --engine ray")
        check_writable(args.output)
        check_pooling(args.output, config.pooling)
    else:
        check_parts_folder(args.output)
        check_not_being_written(args.output)
    model = load_model(args)
    model.resolve_layer(config.layer)  # a layer the model lacks: refused before a job is recorded
    store = None if args.no_cache else open_store(args)
    run = None
    try:
        # every bad record found before any model work; the job's total and the progress bar's
        checked = validate_fasta(args.input, policy=policy, progress=not args.no_progress)
        if store is not None:
            spec = embed_job_spec(
                args.input, args.output, model, config, policy, engine=args.engine
            )
            unfinished = store.jobs.unfinished(spec.kind, spec.key)
            if unfinished is None or not spec.resumable or args.overwrite:
                check = check_output if args.engine == "local" else check_parts_output
                check(args.output, resume=args.resume, overwrite=args.overwrite)
            total = checked.headers if checked else None
            run = JobRun(store.jobs, spec, total=total, restart=args.overwrite)
            summary.job, summary.continued = run.id, run.continued

        def record_progress(progress: JobSummary) -> None:
            if run is not None:
                run.progress(done=progress.done, failed=progress.skipped)

        if args.engine == "ray":
            _embed_ray(args, model, config, policy, store, summary, record_progress)
        else:
            embed_fasta_file(
                args.input,
                args.output,
                model,
                config=config,
                policy=policy,
                resume=args.resume or summary.continued,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                summary=summary,
                cache=store.embeddings if store is not None else None,
                on_flush=record_progress,
                checked=checked,
            )
    except BaseException as exc:  # whatever stops it, the job is not left `running`
        _note_error(summary, exc)
        if run is not None:
            run.finish(done=summary.done, failed=summary.skipped, error=summary.error or "stopped")
        raise
    else:
        if run is not None:
            run.finish(done=summary.done, failed=summary.skipped)
    finally:
        if store is not None:
            store.close()
    return 0


def _note_error(summary: JobSummary, exc: BaseException) -> None:
    """Keep in `summary` the error that stopped the job (the first one noted), as its summary and
    job record say it: a protssl error's message, else the unexpected exception's type and first
    line (its traceback follows). Ctrl-C and SIGTERM are no error."""
    if isinstance(exc, KeyboardInterrupt):
        return
    summary.errors = max(summary.errors, 1)
    if summary.error is None:
        summary.error = (
            str(exc)
            if isinstance(exc, ProtsslError)
            else f"unexpected {type(exc).__name__}: {first_line(exc)}"
        )


def _print_summary(summary: JobSummary) -> None:
    """The job's one JSON line on stdout, its error's advice spelled as this command's options."""
    line = summary.as_dict()
    if line.get("error"):
        line["error"] = as_options(str(line["error"]))
    print(json.dumps(line), flush=True)


def _embed_remote(args: argparse.Namespace, policy: FastaPolicy, summary: JobSummary) -> int:
    """`--server`: the records go to a protssl server, which runs its model and keeps its store;
    OUTPUT is written here as it is locally, each result as it comes back."""
    refuse_beside_server(args, _build, _LOCAL_ONLY)
    with server_client(args) as client:
        client.embed_file(
            args.input,
            args.output,
            model=served_model(args),
            pooling=args.pooling,
            layer=args.layer,
            policy=policy,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            summary=summary,
        )
    return 0


def _embed_ray(
    args: argparse.Namespace,
    model: LoadedModel,
    config: EmbedConfig,
    policy: FastaPolicy,
    store: Store | None,
    summary: JobSummary,
    on_shard: Callable[[JobSummary], None],
) -> None:
    """`--engine ray`: the actors share the store by its URL (PostgreSQL on a cluster)."""
    from protssl.ray_embed import RayOptions, embed_fasta_ray

    options = RayOptions(
        address=args.ray_address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        retries=args.worker_retries,
    )
    embed_fasta_ray(
        args.input,
        args.output,
        model,
        model_spec=args.model,
        trust_pickle=args.trust_pickle,
        allowed_sha256=args.allow_sha256,
        config=config,
        policy=policy,
        options=options,
        database_url=store.config.url if store is not None else None,
        resume=args.resume or summary.continued,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        summary=summary,
        on_shard=on_shard,
    )
