"""Files that survive a kill or a power cut: write a temp file beside, fsync it, rename it over the
old one, fsync the folder. Readers then see the old file or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_file", "fsync_folder", "replace_durably"]


def fsync_file(path: Path) -> None:
    """Make a written file's bytes durable (before it is renamed into place)."""
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make the renames inside `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_folder(path.parent)
