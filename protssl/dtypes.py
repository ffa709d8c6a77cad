"""The compute dtypes a user may name, and the one check of a given name.

Torch-free, so the CLI offers them as choices without importing torch; the service's config and
the model read the same names (`auto` picks bfloat16 where the hardware has it, see `model`).
`int8` is lossy and never picked by `auto`: the encoder's linears run on int8 weights with inputs
quantized on the fly, everything else in float32 (see `kernels.Int8Linear`).
"""

from __future__ import annotations

from typing import Literal

from protssl.errors import InvalidInputError

__all__ = ["DTYPE_NAMES", "DTypeName", "check_dtype_name"]

DTypeName = Literal["auto", "float32", "bfloat16", "int8"]
DTYPE_NAMES: tuple[DTypeName, ...] = ("auto", "float32", "bfloat16", "int8")
"""Every name a --dtype flag, PROTSSL_DTYPE or a config field accepts."""


def check_dtype_name(name: str) -> DTypeName:
    """`name` if it is one of DTYPE_NAMES, else InvalidInputError naming the choices."""
    if name not in DTYPE_NAMES:
        raise InvalidInputError(f"dtype must be auto, float32, bfloat16 or int8, not {name!r}")
    return name  # type: ignore[return-value]
