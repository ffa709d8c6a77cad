"""Durable replacement: the new bytes under the old name, no temp file left, folder synced; a full
disk leaves the old file and is an OutputError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protssl.durable import (
    check_room,
    human_bytes,
    make_folder,
    os_error_in,
    replace_durably,
    writing_durably,
)
from protssl.errors import InvalidInputError, OutputError


def test_replace_durably_puts_the_new_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    tmp = tmp_path / ".out.bin.tmp"
    tmp.write_bytes(b"new")
    replace_durably(tmp, path)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_writing_durably_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    (tmp_path / ".out.bin.tmp").write_bytes(b"a killed writer's")
    with writing_durably(path) as tmp:
        assert not tmp.exists()
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_full_disk_is_an_output_error_and_the_old_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    assert Path("/dev/full").exists()  # Linux's always-full device: every write is ENOSPC
    with pytest.raises(OutputError) as caught, writing_durably(path) as tmp:
        tmp.write_bytes(b"half")
        with open("/dev/full", "wb") as full:
            torch.save({"w": torch.zeros(1000)}, full)  # torch wraps the OSError
    assert str(caught.value) == f"writing {str(path)!r} failed: No space left on device"
    assert os_error_in(caught.value) is not None
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_other_errors_pass_through_and_leave_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(ValueError, match="not a disk problem"), writing_durably(path) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_is_one_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(InvalidInputError) as refused:
        make_folder(blocker / "model", what="model folder")
    assert str(refused.value) == (
        f"model folder {str(blocker / 'model')!r}: cannot create it (Not a directory)"
    )
    make_folder(tmp_path / "x" / "y", what="run folder")
    assert (tmp_path / "x" / "y").is_dir()


def test_room_is_checked_per_disk_against_its_free_space(tmp_path: Path, small_disk: Path) -> None:
    """A real 2 MiB filesystem: what fits passes, what does not is one error with the figures;
    two folders on one disk share its space."""
    check_room([(small_disk, 1_000_000, "a"), (tmp_path, 1_000, "b")])
    (small_disk / "inner").mkdir()
    with pytest.raises(OutputError) as refused:
        check_room([(small_disk, 1_200_000, "OUT.h5"), (small_disk / "inner", 1_200_000, "store")])
    said = str(refused.value)
    assert said.startswith("not enough disk space for this job: OUT.h5: ~1.2 MB; store: ~1.2 MB")
    assert f"the disk holding {str(small_disk)!r} has 2.1 MB free" in said


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (12, 282_600, 156_600_000, 84_300_000_000)] == [
        "12 B", "282.6 kB", "156.6 MB", "84.3 GB"
    ]  # fmt: skip
