"""Batch jobs: enough state to report progress and to resume a job after a stop.

`protssl embed` records itself here (`protssl.batch_job`): a run whose arguments give the key of
an unfinished job continues that job.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

import protssl.store.common as common
import protssl.store.engine as engines
from protssl.errors import InvalidInputError, NotFoundError
from protssl.store.schema import JOB_STATUSES, Base

__all__ = ["JobRepository", "StoredJob"]

_JOBS = Base.metadata.tables["jobs"]
_FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class StoredJob:
    """A batch job's state: enough to report progress and to resume it."""

    id: str
    kind: str
    status: str
    total: int | None
    done: int
    failed: int
    params: dict[str, Any]
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


class JobRepository:
    """Batch jobs: created `pending`, updated as they run, finished with a final status."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, kind: str, *, total: int | None = None, params: Mapping[str, Any] | None = None
    ) -> StoredJob:
        """A new pending job with a random id."""
        now = common.now()
        values = {
            "id": uuid.uuid4().hex,
            "kind": kind,
            "status": "pending",
            "total": total,
            "done": 0,
            "failed": 0,
            "params": common.json_object(params or {}, "job params"),
            "error": None,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        }
        with (
            common.store_errors("recording the job"),
            engines.write_transaction(self._engine) as connection,
        ):
            connection.execute(_JOBS.insert(), values)
        return StoredJob(**values)  # type: ignore[arg-type]

    def update(
        self,
        job_id: str,
        *,
        status: str | None = None,
        total: int | None = None,
        done: int | None = None,
        failed: int | None = None,
        error: str | None = None,
    ) -> StoredJob:
        """Set the given fields; a final status (succeeded, failed, cancelled) stamps finished_at."""
        if status is not None and status not in JOB_STATUSES:
            raise InvalidInputError(f"job status must be one of {', '.join(JOB_STATUSES)}")
        now = common.now()
        changes: dict[str, Any] = {"updated_at": now}
        for field_name, value in (
            ("status", status),
            ("total", total),
            ("done", done),
            ("failed", failed),
            ("error", error),
        ):
            if value is not None:
                changes[field_name] = value
        if status in _FINISHED:
            changes["finished_at"] = now
        with (
            common.store_errors("updating the job"),
            engines.write_transaction(self._engine) as connection,
        ):
            result = connection.execute(_JOBS.update().where(_JOBS.c.id == job_id).values(changes))
        if result.rowcount == 0:
            raise NotFoundError(f"no job {job_id!r} in the store")
        return self.get(job_id)

    def get(self, job_id: str) -> StoredJob:
        """The job with this id, or NotFoundError."""
        with common.store_errors("reading the job"), self._engine.connect() as connection:
            row = connection.execute(select(_JOBS).where(_JOBS.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r} in the store")
        return self._from_row(row)

    def list(self, *, status: str | None = None) -> list[StoredJob]:
        """Jobs, newest first; only those with `status` if given (e.g. `running`, to resume)."""
        statement = select(_JOBS).order_by(_JOBS.c.created_at.desc())
        if status is not None:
            statement = statement.where(_JOBS.c.status == status)
        with common.store_errors("reading the jobs"), self._engine.connect() as connection:
            return [self._from_row(row) for row in connection.execute(statement)]

    def unfinished(self, kind: str, key: str) -> StoredJob | None:
        """The newest job of `kind` whose params hold this `key`, when it has not succeeded (nor
        been cancelled: a later run started over); else None. An older job left unfinished is
        past continuing once a newer one of the same key ran."""
        for job in self.list():
            if job.kind == kind and job.params.get("key") == key:
                return job if job.status in ("pending", "running", "failed") else None
        return None

    @staticmethod
    def _from_row(row: Any) -> StoredJob:
        return StoredJob(
            id=row.id,
            kind=row.kind,
            status=row.status,
            total=row.total,
            done=row.done,
            failed=row.failed,
            params=dict(row.params),
            error=row.error,
            created_at=common.utc(row.created_at),
            updated_at=common.utc(row.updated_at),
            finished_at=common.utc(row.finished_at) if row.finished_at is not None else None,
        )
