"""`protssl analyze` end to end: a tiny model on examples/ writes every file and prints the headline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protssl.analysis.config import COMPARED_POOLINGS, SERVED_POOLINGS
from protssl.analysis.plots import FIGURES
from protssl.checkpoint import CARD_NAME, file_sha256, read_card
from protssl.cli import main


@pytest.mark.slow
def test_analyze_tiny_model_on_examples_writes_the_report_and_updates_the_card(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for path in tiny_model_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    weights_sha = file_sha256(model / "model.safetensors")
    out = tmp_path / "report"
    args = ["analyze", str(model), "-o", str(out), "--data", "examples"]
    args += ["--shots", "1,2,4", "--draws", "2", "--val-records", "4", "--view-records", "8"]
    assert main([*args, "--no-progress", "--update-card"]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert top["data"] == "examples" and top["report"] == str(out / "report.md")
    assert top["recommended_pooling"] in SERVED_POOLINGS and 0 <= top["recommended_layer"] <= 2
    assert set(top["fewshot"]["is_families"]) == {
        "model",
        "composition_z",
        "kmer3",
        "composition_segments_z",
    }
    assert len(top["fewshot"]["is_families"]["model"]) == 3
    for name in (*FIGURES, "report.md", "report.html", "report.json"):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(FIGURES)
    full = json.loads((out / "report.json").read_text())
    assert full["headline"] == {k: v for k, v in top.items() if k != "report"}
    assert set(full["selection"]["score"]) == set(COMPARED_POOLINGS)
    assert full["skipped"] == {}
    training = read_card(model).training
    assert training is not None
    assert training["recommended_layer"] == top["recommended_layer"]
    assert training["recommended_pooling"] == top["recommended_pooling"]
    assert file_sha256(model / "model.safetensors") == weights_sha  # weights untouched


def test_update_card_needs_a_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", "protssl-tiny", "--update-card", "-o", str(tmp_path)]) == 2
    assert "needs a protssl model folder" in capsys.readouterr().err
    assert not (tmp_path / CARD_NAME).exists()


def test_bad_shots_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "x", "--shots", "1,two"])
    assert exit_info.value.code == 2
    assert "expected counts like 1,2,4,8,16" in capsys.readouterr().err


def test_a_report_folder_that_cannot_be_made_is_refused_before_the_analysis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    assert main(["analyze", "protssl-tiny", "-o", str(blocker / "r"), "--no-progress"]) == 2
    said = capsys.readouterr()
    assert said.err == (
        f"protssl analyze: error: report folder {str(blocker / 'r')!r}: cannot create it "
        "(Not a directory)\n"
    )


def test_a_labelled_set_too_small_for_the_shots_is_said_when_skipped(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A set with too few records a class for `--shots` was left out without a word (only a
    missing file was warned of), and the recommendation rested on the sets that were left."""
    args = ["analyze", str(tiny_model_dir), "-o", str(tmp_path / "r"), "--data", "examples"]
    args += ["--shots", "1,200", "--draws", "1", "--val-records", "4", "--view-records", "4"]
    with caplog.at_level("WARNING", logger="protssl.analysis.run"):
        assert main([*args, "--no-progress"]) == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "protssl.analysis.run"]
    assert warned == [
        "skipping is_families: fewer than two classes with 202 records (the most shots and "
        "queries per class): fewer --shots or --queries measure it"
    ]
    assert "no labelled set could be measured" in capsys.readouterr().err
