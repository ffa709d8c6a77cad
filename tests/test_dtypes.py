"""The dtype names a user may give: one list, one check, the same for the CLI and the service."""

from __future__ import annotations

import pytest

from protssl.cli import build_parser
from protssl.dtypes import DTYPE_NAMES, check_dtype_name
from protssl.errors import InvalidInputError
from service.config import ServiceConfig


def test_each_name_passes_and_any_other_is_a_user_error() -> None:
    assert [check_dtype_name(name) for name in DTYPE_NAMES] == [
        "auto",
        "float32",
        "bfloat16",
        "int8",
    ]
    with pytest.raises(InvalidInputError, match="auto, float32, bfloat16 or int8, not 'fp16'"):
        check_dtype_name("fp16")


def test_the_cli_and_the_service_accept_the_same_names() -> None:
    for name in DTYPE_NAMES:
        assert (
            build_parser().parse_args(["classify", "c", "in.fasta", "--dtype", name]).dtype == name
        )
        assert ServiceConfig(dtype=name).dtype == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "in.fasta", "-o", "o.h5", "--dtype", "fp16"])
    with pytest.raises(InvalidInputError, match="not 'fp16'"):
        ServiceConfig(dtype="fp16")  # type: ignore[arg-type]
