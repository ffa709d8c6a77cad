"""Files that survive a kill or a power cut: write a temp file beside, fsync it, rename it over the
old one, fsync the folder. Readers then see the old file or the new one, never half of either.
And one writer at a time: an exclusive lock a second process is refused with one line."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from protssl.errors import InvalidInputError, OutputError, first_line

__all__ = [
    "ExclusiveLock",
    "check_can_create",
    "check_not_the_input",
    "check_room",
    "fsync_file",
    "fsync_folder",
    "human_bytes",
    "make_folder",
    "missing_folders",
    "os_error_in",
    "refuse_existing",
    "remove_empty",
    "replace_durably",
    "writing_durably",
]


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


def make_folder(path: Path, *, what: str) -> None:
    """`mkdir -p path`; one that cannot be made (a read-only place, a file in the way, no
    permission) is one InvalidInputError naming it as `what` ("model folder", "run folder")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"{what} {str(path)!r}: cannot create it ({exc.strerror or first_line(exc)})"
        ) from None


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what `make_folder`
    will create, for `remove_empty` to take back."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty: a command stopped before it wrote
    anything leaves no folder it made, which would look like a started output or run. `rmdir`
    removes only an empty folder, so one that holds anything is kept, and so are its parents."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            return


def check_can_create(path: Path, *, hint: str = "give a file name") -> None:
    """Fail before any work when `path` could not be written: it is a folder (`hint` says what to
    give instead), or its folder is missing, not a folder, or read-only."""
    if path.is_dir():
        raise InvalidInputError(f"output {str(path)!r} is a folder: {hint}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InvalidInputError(f"output {str(path)!r}: {str(parent)!r} is not a folder")
    if not parent.is_dir():
        raise InvalidInputError(f"output {str(path)!r}: folder {str(parent)!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".protssl-probe-"):
            pass
    except OSError as exc:
        raise InvalidInputError(
            f"output {str(path)!r}: cannot write in folder {str(parent)!r} ({exc.strerror})"
        ) from None


def refuse_existing(path: Path, *, advice: str) -> None:
    """Fail before any work when the output `path` exists: a command replaces a file only when told
    to; `advice` names the flags that continue or replace it."""
    if path.exists():
        raise InvalidInputError(f"output {str(path)!r} exists: {advice}")


def check_not_the_input(path: Path, source: str) -> None:
    """Fail before any work when the output `path` is the input file `source` (the same path, or a
    link to it): the finished output would replace what is still being read."""
    if source != "-" and path.exists() and Path(source).exists() and path.samefile(source):
        raise InvalidInputError(f"output {str(path)!r} is the input file: give another -o")


def check_room(needs: Sequence[tuple[Path, int, str]]) -> None:
    """Fail before any work when what a job will write cannot fit: `needs` holds (folder, bytes,
    what is written there); folders on one filesystem share its free space. An overnight job then
    stops at its start, not at a full disk hours in."""
    by_disk: dict[int, list[tuple[Path, int, str]]] = {}
    for folder, size, what in needs:
        by_disk.setdefault(folder.stat().st_dev, []).append((folder, size, what))
    for items in by_disk.values():
        need = sum(size for _, size, _ in items)
        free = shutil.disk_usage(items[0][0]).free
        if need > free:
            said = "; ".join(f"{what}: ~{human_bytes(size)}" for _, size, what in items)
            raise OutputError(
                f"not enough disk space for this job: {said}; the disk holding "
                f"{str(items[0][0].resolve())!r} has {human_bytes(free)} free: free space there, or write "
                "to a disk with more room"
            )


def human_bytes(nbytes: int) -> str:
    """`nbytes` as people read it: 1.5 GB, 282.6 kB, 12 B."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


@contextmanager
def writing_durably(path: Path, *, tmp: Path | None = None) -> Iterator[Path]:
    """Write `path` whole or not at all: the block writes the temp path yielded (`tmp`, default
    `.NAME.tmp` beside `path`; one a killed writer left is removed first), which is then fsynced
    and renamed over `path`.

    On any failure the temp file is removed (a full disk gets its space back) and `path` is as it
    was. A failure of the machine's (an OSError: a full disk, a quota, an I/O error, found anywhere
    in the exception's chain, since torch wraps it in a RuntimeError) is raised as `OutputError`
    naming `path`; anything else as it came.
    """
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a killed writer's
    try:
        yield tmp
        replace_durably(tmp, path)
    except Exception as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        reason = os.strerror(cause.errno) if cause.errno else first_line(cause)
        raise OutputError(f"writing {str(path)!r} failed: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError `exc` is or was raised from (its `__cause__`/`__context__` chain), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class ExclusiveLock:
    """An exclusive `flock` on a lock file that holds its owner's pid, for as long as one process
    writes something a second must not write at the same time (an output, a training run).

    The file is removed on `release`; one a killed process left is unlocked, so it never blocks.
    """

    def __init__(self, descriptor: int, path: Path) -> None:
        self._descriptor, self._path = descriptor, path

    @classmethod
    def acquire(cls, path: Path, *, busy: str, advice: str) -> ExclusiveLock | None:
        """The lock on `path`, or None where it cannot be had (no locks on that filesystem, an
        unwritable folder: another check's to say). Held by another process: InvalidInputError
        `{busy} by another process (pid N): {advice}`."""
        while True:
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
                os.close(descriptor)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise InvalidInputError(f"{busy} by another process{pid}: {advice}") from None
            except OSError:
                os.close(descriptor)
                return None
            try:
                current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:  # not a file its last holder removed between our open and our lock
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
                return cls(descriptor, path)
            os.close(descriptor)

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order, so no one locks a removed file)."""
        if self._descriptor < 0:
            return
        self._path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = -1

    def __del__(self) -> None:
        # dropped unreleased, it unlocks as a killed process does, leaving the file
        if self._descriptor >= 0:
            os.close(self._descriptor)
