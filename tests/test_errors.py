"""The one error table: each error's gRPC status and exit code, and back from a status to an error."""

from __future__ import annotations

import importlib
import pickle

import pytest

from protssl import errors
from protssl.errors import (
    ERROR_TABLE,
    CheckpointError,
    ClassifierNotFoundError,
    FastaFormatError,
    InvalidInputError,
    ProtsslError,
    ServiceError,
    StoreError,
    UnavailableError,
    UntrustedCheckpointError,
    error_for_status,
    exit_code_for,
    status_name_for,
)


def test_subclasses_take_their_parents_row_unless_they_have_one() -> None:
    fasta = FastaFormatError("gap", source="x.fasta", record_id="P1", position=3)
    assert status_name_for(fasta) == "INVALID_ARGUMENT"
    assert status_name_for(ClassifierNotFoundError("no")) == "NOT_FOUND"
    assert status_name_for(UntrustedCheckpointError("pickle")) == "FAILED_PRECONDITION"
    assert status_name_for(StoreError("db down")) == "UNAVAILABLE"
    assert status_name_for(ValueError("bug")) is None


def test_exit_codes() -> None:
    assert exit_code_for(InvalidInputError("x")) == errors.EXIT_USER_ERROR == 2
    assert exit_code_for(StoreError("x")) == 2
    assert exit_code_for(ProtsslError("not in the table")) == 2
    assert exit_code_for(RuntimeError("bug")) == errors.EXIT_UNEXPECTED == 1


@pytest.mark.parametrize("row", ERROR_TABLE, ids=lambda row: row.error.__name__)
def test_each_row_comes_back_as_its_class_when_the_server_names_it(row: errors.ErrorRow) -> None:
    back = error_for_status(row.status, "message", kind=row.error.__name__)
    assert type(back) is row.error and str(back) == "message"


def test_back_from_a_status_alone_or_a_foreign_kind() -> None:
    assert type(error_for_status("UNAVAILABLE", "m")) is UnavailableError
    assert type(error_for_status("UNAVAILABLE", "m", kind="StoreError")) is StoreError
    # a named class whose row has another status, or a name we do not know: the status decides
    assert type(error_for_status("NOT_FOUND", "m", kind="StoreError")) is errors.NotFoundError
    assert type(error_for_status("INVALID_ARGUMENT", "m", kind="KeyError")) is InvalidInputError
    # FastaFormatError needs its record and position; the message already carries them
    assert type(error_for_status("INVALID_ARGUMENT", "m", kind="FastaFormatError")) is (
        InvalidInputError
    )
    assert type(error_for_status("OUT_OF_RANGE", "m")) is InvalidInputError
    other = error_for_status("ABORTED", "m")
    assert type(other) is ServiceError and other.code == "ABORTED"
    assert isinstance(error_for_status("FAILED_PRECONDITION", "m"), CheckpointError)


def test_first_line_quotes_the_first_non_blank_line_or_the_type() -> None:
    assert (
        errors.first_line(RuntimeError("Timed out waiting\n  for the file\n"))
        == "Timed out waiting"
    )
    assert errors.first_line(OSError("\n  refused  \nmore")) == "refused"
    assert errors.first_line(TimeoutError()) == "TimeoutError"
    assert errors.first_line(ValueError(" \n ")) == "ValueError"


def test_a_fasta_error_survives_pickling_with_its_fields() -> None:
    """How an error leaves a Ray actor; the default pickling gave `__init__` the message alone and
    the unpickling itself failed (missing `source`)."""
    error = FastaFormatError(
        "invalid residue '-' (an alignment gap)",
        source="shard.fasta",
        record_id="P1",
        position=4,
        record_index=2,
        hint="gaps strip removes the gaps",
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is FastaFormatError and str(again) == str(error)
    fields = ("source", "record_id", "position", "record_index", "hint", "message", "where")
    assert [getattr(again, f) for f in fields] == [getattr(error, f) for f in fields]


def test_service_errors_survive_pickling_with_their_status() -> None:
    """A plain ServiceError's status came back INTERNAL, whatever it was."""
    for error in (
        errors.ServiceError("busy", code="RESOURCE_EXHAUSTED"),
        errors.UnavailableError("down"),
        errors.DeadlineExceededError("late"),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again), again.code) == (type(error), str(error), error.code)


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        ("protssl.fewshot.config:FewShotConfig", "target_precision", "nan"),
        ("protssl.store.config:StoreConfig", "busy_timeout_s", "inf"),
        ("protssl.analysis.config:AnalysisConfig", "crop_fraction", "nan"),
        ("protssl.ray_embed:RayOptions", "gpus_per_worker", "nan"),
        ("protssl.client:Client", "reconnect", "nan"),
        ("protssl.client:Client", "timeout", "inf"),
    ],
)
def test_configs_refuse_nan_and_infinite_numbers(make: str, field: str, value: str) -> None:
    """NaN passed the configs' `< 0` and range checks (a client's reconnect=nan never waited)."""
    module, name = make.split(":")
    config = getattr(importlib.import_module(module), name)
    with pytest.raises(
        errors.InvalidInputError, match=rf"^{field} must be a finite number, got {value}$"
    ):
        config(**{field: float(value)})
