"""A run's log.csv (cut back on resume), and the loss-curve plot drawn from it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pretrain_support import log_rows

from protssl.errors import InvalidInputError
from protssl.pretrain.logs import LOG_FIELDS, PLOT_NAME, RunLog, plot_run, train_curves


def test_resume_drops_the_rows_after_the_checkpoint(tmp_path: Path) -> None:
    log = RunLog(tmp_path, resume_step=None, tensorboard=False)
    for step in range(1, 5):
        log.write({"step": step, "tokens": 100 * step, "loss": f"{4 - step / 10:.4f}"})
    log.write({"step": 4, "tokens": 400, "val_loss": "3.5000", "val_ppl": "33.115"})
    log.close()
    resumed = RunLog(tmp_path, resume_step=2, tensorboard=False)
    assert [r["step"] for r in log_rows(tmp_path)] == ["1", "2"]
    resumed.write({"step": 3, "tokens": 300, "loss": "3.7000", "lr": "1.000e-03"})
    last = log_rows(tmp_path)[-1]
    assert list(last) == list(LOG_FIELDS)
    assert last == dict.fromkeys(LOG_FIELDS, "") | {
        "step": "3",
        "tokens": "300",
        "loss": "3.7000",
        "lr": "1.000e-03",
    }


def test_plot_run_draws_the_curve_and_needs_a_log(tmp_path: Path) -> None:
    log = RunLog(tmp_path, resume_step=None, tensorboard=False)
    for step in range(1, 4):
        log.write({"step": step, "tokens": 1000 * step, "loss": "3.0", "val_ppl": "20.0"})
    assert plot_run(tmp_path) == tmp_path / PLOT_NAME
    assert (tmp_path / PLOT_NAME).stat().st_size > 1000
    empty = tmp_path / "empty"
    empty.mkdir()
    message = f"{empty}: no log.csv there; is it a pretraining run folder?"
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        plot_run(empty)


def test_contrastive_runs_plot_each_term_not_their_sum() -> None:
    mlm_run = [{"step": "1", "tokens": "1000", "loss": "3.0"}]
    assert train_curves(mlm_run) == {"train ppl (masked)": [(0.001, pytest.approx(math.exp(3.0)))]}
    both = [
        {
            "step": "1",
            "tokens": "2000000",
            "loss": "5.0",
            "mlm_loss": "3.0",
            "contrastive_loss": "2.0",
        }
    ]
    curves = train_curves(both)
    assert curves["train ppl (masked)"] == [(2.0, pytest.approx(math.exp(3.0)))]
    assert curves["train NT-Xent ppl (2N-1 choices)"] == [(2.0, pytest.approx(math.exp(2.0)))]
    only = [{"step": "1", "tokens": "1000", "loss": "2.0", "contrastive_loss": "2.0"}]
    assert list(train_curves(only)) == ["train NT-Xent ppl (2N-1 choices)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "not a pretraining log: no tokens or loss column (columns found: none, the file is empty)",
        ),
        (
            "step,loss\n1,2.0\n",
            "not a pretraining log: no tokens column (columns found: step, loss)",
        ),
        (
            "step,tokens,loss\n1,100,2.0\n2,abc,1.9\n",
            "line 3: column tokens holds 'abc', not a number",
        ),
        ("step,tokens,loss\n1\n", "line 2: column tokens holds nothing, not a number"),
        (
            "step,tokens,loss,val_ppl\n1,100,2.0,high\n",
            "line 2: column val_ppl holds 'high', not a number",
        ),
    ],
)
def test_plot_run_refuses_a_log_it_cannot_plot_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "log.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=re.escape(f"{tmp_path / 'log.csv'}: {message}")):
        plot_run(tmp_path)
    assert not (tmp_path / PLOT_NAME).exists()


def test_a_diverged_runs_log_is_plotted(tmp_path: Path) -> None:
    """A loss past exp's range (a run that diverged) crashed the plot, and with it the run's end."""
    (tmp_path / "log.csv").write_text("step,tokens,loss\n1,1000,3.0\n2,2000,750.5\n")
    assert plot_run(tmp_path) == tmp_path / PLOT_NAME
    assert train_curves(log_rows(tmp_path))["train ppl (masked)"][1] == (0.002, math.inf)


def test_plot_run_draws_a_log_without_validation_columns(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("step,tokens,loss\n1,1000,3.0\n2,2000,2.9\n")
    assert plot_run(tmp_path) == tmp_path / PLOT_NAME
