"""What a run reports as it goes: rows of log.csv, TensorBoard scalars, and the loss-curve plot."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protssl.errors import InvalidInputError

__all__ = ["LOG_FIELDS", "LOG_NAME", "PLOT_NAME", "RunLog", "plot_run", "train_curves"]

LOG_NAME = "log.csv"
PLOT_NAME = "loss_curve.png"
LOG_FIELDS = (
    "step",
    "tokens",
    "loss",
    "val_loss",
    "val_ppl",
    "probe_nn1",
    "probe_nn1_best",
    "lr",
    "tok_per_s",
    "mlm_loss",
    "contrastive_loss",
)


class RunLog:
    """Append-only log.csv of LOG_FIELDS, and TensorBoard events under run_dir/tb when asked.

    On resume, the CSV rows after the checkpoint's step are dropped (they are trained again).
    """

    def __init__(self, run_dir: Path, *, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run_dir / LOG_NAME
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with self.path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self._events = _tensorboard(run_dir) if tensorboard else None

    def write(self, row: Mapping[str, object]) -> None:
        """Append one CSV row (fields it lacks stay empty)."""
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_FIELDS).writerow(
                {k: row.get(k, "") for k in LOG_FIELDS}
            )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard scalars at `step` (nothing without TensorBoard)."""
        if self._events is not None:
            for tag, value in values.items():
                self._events.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the TensorBoard events."""
        if self._events is not None:
            self._events.close()


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter on run_dir/tb; a clear error without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InvalidInputError(
            "--tensorboard needs the tensorboard package (pip install tensorboard)"
        ) from None
    return SummaryWriter(str(run_dir / "tb"))


def train_curves(rows: list[dict[str, str]]) -> dict[str, list[tuple[float, float]]]:
    """Training curves by label, as (million tokens, perplexity): the masked-LM term and, for
    contrastive objectives, exp(NT-Xent), the perplexity of picking the partner among 2N-1."""
    columns = {
        "train ppl (masked)": "mlm_loss",
        "train NT-Xent ppl (2N-1 choices)": "contrastive_loss",
    }
    if not any(r.get("mlm_loss") or r.get("contrastive_loss") for r in rows):
        columns = {"train ppl (masked)": "loss"}  # an MLM run: its loss is the masked-LM term
    curves = {
        label: [(int(r["tokens"]) / 1e6, _perplexity(float(r[key]))) for r in rows if r.get(key)]
        for label, key in columns.items()
    }
    return {label: points for label, points in curves.items() if points}


def _perplexity(loss: float) -> float:
    """exp(loss); infinite past a float's range (a diverged run's loss), where math.exp raises."""
    return math.exp(loss) if loss < _LARGEST_EXP else math.inf


_LARGEST_EXP = math.log(sys.float_info.max)


_PLOTTED_COLUMNS = ("tokens", "loss")
"""Columns every log.csv protssl has written holds, and the plot cannot do without."""


def _read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a run's log.csv, checked so that plotting them cannot fail: the columns the plot
    needs are there, `tokens` is a whole number and the other known columns are numbers or empty.
    A log from another version or another program is refused in one line naming the file."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in _PLOTTED_COLUMNS if c not in columns]
            if missing:
                found = ", ".join(columns) if columns else "none, the file is empty"
                raise InvalidInputError(
                    f"{path}: not a pretraining log: no {' or '.join(missing)} column "
                    f"(columns found: {found})"
                )
            rows = []
            for row in reader:
                _check_row(path, reader.line_num, row)
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: not a pretraining log: {exc}") from None
    return rows


def _check_row(path: Path, line: int, row: dict[str, str]) -> None:
    """Refuse a log row whose `tokens` is not a whole number or whose known columns hold
    something other than a number, naming the file, line and column."""
    for column in LOG_FIELDS:
        value = row.get(column) or ""
        if column != "tokens" and not value:
            continue
        parse = int if column in ("step", "tokens") else float
        try:
            parse(value)
        except ValueError:
            held = repr(value) if value else "nothing"
            raise InvalidInputError(
                f"{path}: line {line}: column {column} holds {held}, not a number"
            ) from None


def plot_run(run_dir: str | Path) -> Path:
    """Draw the training curves, validation perplexity and any probe 1-NN against tokens seen into
    run_dir/loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / LOG_NAME
    if not path.is_file():
        raise InvalidInputError(f"{run_dir}: no {LOG_NAME} there; is it a pretraining run folder?")
    rows = _read_log(path)
    val = [(int(r["tokens"]) / 1e6, float(r["val_ppl"])) for r in rows if r.get("val_ppl")]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for (label, points), color in zip(train_curves(rows).items(), ("0.6", "C1"), strict=False):
        ax.plot(*zip(*points, strict=True), color=color, lw=0.8, label=label)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="C0", ms=3, label="val ppl (held-out 2%)")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    probe = [(int(r["tokens"]) / 1e6, float(r["probe_nn1"])) for r in rows if r.get("probe_nn1")]
    if probe:
        right = ax.twinx()
        right.plot(
            *zip(*probe, strict=True), "s-", color="C2", ms=3, label="probe 1-NN (last layer)"
        )
        right.set_ylabel("probe 1-NN accuracy")
        right.set_ylim(0, 1)
        extra_handles, extra_labels = right.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    ax.legend(handles, labels)
    ax.set_title(run_dir.name)
    fig.tight_layout()
    out = run_dir / PLOT_NAME
    fig.savefig(out)
    plt.close(fig)
    return out
