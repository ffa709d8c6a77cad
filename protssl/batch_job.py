"""A batch job's identity and its row in the `jobs` table, so a stopped job continues when run again.

Two runs are the same job when they read the same input (path and sha256 of its bytes), write the
same output, with the same model (sha256) and the same options that change the vectors. A run
whose job is unfinished in the store (killed, failed) continues it: the output keeps what it holds
and the store's cache gives back every vector already computed, so nothing stored is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protssl.store.jobs import JobRepository, StoredJob

__all__ = ["JobRun", "JobSpec", "file_sha256"]

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file's bytes (as stored: a .gz is hashed compressed); None for stdin (`-`)."""
    if str(path) == "-":
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class JobSpec:
    """What makes two runs the same job; stored as the job's params, with its `key`."""

    kind: str
    input: str
    """The input path as given, made absolute."""
    input_sha256: str | None
    output: str
    model_sha256: str
    options: Mapping[str, Any] = field(default_factory=dict)
    """Everything else that changes the result (pooling, layer, window, FASTA policy, engine)."""

    @classmethod
    def for_files(
        cls,
        kind: str,
        source: str | Path,
        output: str | Path,
        *,
        model_sha256: str,
        options: Mapping[str, Any],
    ) -> JobSpec:
        """The spec of a job from `source` to `output`; hashes the input (stdin has no hash)."""
        stdin = str(source) == "-"
        return cls(
            kind=kind,
            input="-" if stdin else str(Path(source).resolve()),
            input_sha256=file_sha256(source),
            output=str(Path(output).resolve()),
            model_sha256=model_sha256,
            options=dict(options),
        )

    @property
    def resumable(self) -> bool:
        """Only a file can be read again: a job from stdin is recorded but never continued."""
        return self.input_sha256 is not None

    @property
    def key(self) -> str:
        """sha256 of the spec as canonical JSON."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


class JobRun:
    """One run of a job: continues the unfinished job of the same spec, or records a new one."""

    def __init__(
        self, jobs: JobRepository, spec: JobSpec, *, total: int | None = None, restart: bool = False
    ) -> None:
        """`restart` (the output is being replaced, `--overwrite`): an unfinished job of the spec
        is cancelled, not continued, and this run is a new job."""
        self._jobs = jobs
        previous = jobs.unfinished(spec.kind, spec.key) if spec.resumable else None
        if previous is not None and restart:
            jobs.update(
                previous.id, status="cancelled", error="replaced by a run that started over"
            )
            previous = None
        self.continued = previous is not None
        """True when this run continues a job a previous run left unfinished."""
        if previous is None:
            previous = jobs.create(spec.kind, total=total, params={**asdict(spec), "key": spec.key})
        else:
            log.info("continuing job %s (%d of %s done)", previous.id, previous.done, total)
        cleared = "" if self.continued else None  # the error of the run this one continues
        self.job: StoredJob = jobs.update(previous.id, status="running", total=total, error=cleared)

    @property
    def id(self) -> str:
        return self.job.id

    def progress(self, *, done: int, failed: int = 0) -> None:
        """Record how many records have their vector (`done`) and how many were dropped."""
        self.job = self._jobs.update(self.job.id, done=done, failed=failed)

    def finish(self, *, done: int, failed: int = 0, error: str | None = None) -> None:
        """Final counts; `succeeded` without an error, else `failed` with it (run again to continue)."""
        status = "failed" if error else "succeeded"
        self.job = self._jobs.update(
            self.job.id, status=status, done=done, failed=failed, error=error
        )
