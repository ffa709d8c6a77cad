"""Durable replacement: the new bytes under the old name, no temp file left, folder synced."""

from __future__ import annotations

from pathlib import Path

from protssl.durable import replace_durably


def test_replace_durably_puts_the_new_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    tmp = tmp_path / ".out.bin.tmp"
    tmp.write_bytes(b"new")
    replace_durably(tmp, path)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
