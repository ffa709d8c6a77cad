from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from protssl.alphabet import ALPHABET
from protssl.batching import WindowPolicy, plan_windows, read_ahead, token_batches
from protssl.errors import InvalidInputError, SequenceTooLongError
from protssl.fasta import read_fasta


@pytest.mark.parametrize("length", [1, 1022, 1023, 2000, 5000, 31921])
def test_windows_cover_everything_with_at_least_the_overlap(length: int) -> None:
    windows = plan_windows(length, 1022, 256)
    assert windows[0][0] == 0 and windows[-1][1] == length
    assert all(end - start == min(length, 1022) for start, end in windows)
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end - start >= 256
    if length > 1022:
        assert len(plan_windows(length, 1022, 0)) <= len(windows)


def test_batches_respect_budget_sort_longest_first_and_keep_every_residue(
    sample_fasta: Path,
) -> None:
    sequences = [r.sequence for r in read_fasta(sample_fasta)][:300]
    batches = list(
        token_batches(sequences, max_tokens=4096, window_residues=1022, policy=WindowPolicy())
    )
    widths = [b.tokens.shape[1] for b in batches]
    assert all(b.tokens.numel() <= 4096 for b in batches)
    assert widths == sorted(widths, reverse=True)
    covered: dict[int, int] = {}
    for batch in batches:
        for row, window in enumerate(batch.windows):
            tokens = batch.tokens[row]
            assert tokens[0] == ALPHABET.cls_idx and tokens[window.length + 1] == ALPHABET.eos_idx
            covered[window.item] = covered.get(window.item, 0) + window.length
    assert all(covered[i] >= len(s) for i, s in enumerate(sequences))


def test_refuse_policy_names_the_record() -> None:
    with pytest.raises(SequenceTooLongError, match="long1"):
        list(
            token_batches(
                ["M" * 50, "M" * 70],
                max_tokens=512,
                window_residues=62,
                policy=WindowPolicy(mode="refuse"),
                ids=["short", "long1"],
            )
        )
    with pytest.raises(InvalidInputError):
        WindowPolicy(mode="truncate")  # type: ignore[arg-type]


def test_read_ahead_groups_keep_order_and_close_at_the_residue_budget(
    sample_fasta: Path,
) -> None:
    records = list(read_fasta(sample_fasta))[:200]
    budget = 20_000
    groups = list(read_ahead(iter(records), budget))
    assert [r.id for g in groups for r in g] == [r.id for r in records]
    for group in groups[:-1]:
        held = sum(len(r.sequence) for r in group)
        assert held >= budget and held - len(group[-1].sequence) < budget
    assert len(groups) > 2
    assert list(read_ahead([], budget)) == []
