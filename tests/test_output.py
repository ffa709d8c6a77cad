"""Vector files: dataset names stay flat whatever the record id holds."""

from __future__ import annotations

from protssl.output import dataset_name


def test_ids_with_slashes_stay_flat() -> None:
    assert dataset_name("sp|P1/2%x") == "sp|P1%2F2%25x"
