"""Which data a report uses, and labelled sets sampled the same way every time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protssl.analysis import data as data_module
from protssl.analysis.config import EXAMPLES_DIR
from protssl.analysis.data import LabelledSpec, find_data, load_labelled
from protssl.errors import InvalidInputError


def test_without_shared_data_examples_are_used_and_said_and_a_folder_given_must_hold_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "DEFAULT_DATA_DIR", tmp_path)
    source = find_data()
    assert source.name == "examples" and source.corpus == EXAMPLES_DIR / "proteins.fasta"
    assert [s.name for s in source.labelled] == ["is_families"]
    assert "using examples/" in caplog.text and "using examples/" in source.note
    assert find_data("examples").corpus == source.corpus
    typo = tmp_path / "shraed"
    with pytest.raises(InvalidInputError, match=re.escape(f"--data {typo}: no pretrain/")):
        find_data(typo)  # it fell back to examples/, and --update-card wrote rough figures
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "pretrain_corpus.fasta").write_text(">a\nMKV\n")
    shared = find_data(tmp_path)
    assert shared.name == "shared"
    assert [s.name for s in shared.labelled] == ["ec_split10", "is_families", "pfam"]


def test_labelled_sets_keep_single_labels_balanced_and_seeded(tmp_path: Path) -> None:
    fasta = tmp_path / "l.fasta"
    rows = [f">a{i} label=A\nMKVL\n" for i in range(5)] + [
        f">b{i} label=B\nMKVI\n" for i in range(3)
    ]
    rows += [">c0 label=C\nMKVA\n", ">m label=A;B\nMKVW\n"]
    fasta.write_text("".join(rows))
    spec = LabelledSpec("t", (fasta,), True)
    chosen = load_labelled(spec, per_class=3, min_class=2)
    assert chosen.labels == ("A", "A", "A", "B", "B", "B") and chosen.classes == 2
    assert "m" not in chosen.ids  # multi-label records are left out
    assert load_labelled(spec, per_class=3, min_class=2) == chosen
