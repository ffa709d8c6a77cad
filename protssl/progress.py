"""Progress bars (tqdm) that suit where they are shown: redrawn in place on a terminal; written to a
log file (a batch job's stderr under SLURM or nohup), one plain line a minute, so that an overnight
run leaves a log a person can read instead of one line of hundreds of thousands of redraws."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 60.0
"""Seconds between a bar's lines in a log (where a terminal redraws it ten times a second)."""


class _LogLines:
    """What tqdm writes, as log lines: each redraw (`\\r` + the bar) one line; a redraw of the same
    count (tqdm draws the last one twice) and the clearing of a bar dropped."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        counted = line.split("[")[0]  # the bar and its count, not its clock
        if line and counted != self._last:
            self._stream.write(line + "\n")
            self._last = counted

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """`tqdm(iterable, **options)` on stderr (or `file=`); where that is not a terminal, one line
    per `LOG_INTERVAL_S` (unless `mininterval` is given) instead of redraws in place."""
    stream = options.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        options.setdefault("mininterval", LOG_INTERVAL_S)
        stream = _LogLines(stream)
    return tqdm(iterable, file=stream, **options)


def _is_terminal(stream: Any) -> bool:
    """A terminal, or a Jupyter notebook's output (not a TTY, but it redraws on `\\r` too)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
