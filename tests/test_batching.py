from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from protssl.alphabet import ALPHABET
from protssl.batching import (
    Footprint,
    WindowPolicy,
    footprint,
    pack_around,
    padded_tokens,
    plan_windows,
    read_ahead,
    token_batches,
)
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


def test_padded_tokens_and_footprints_count_bos_eos_and_windows() -> None:
    assert padded_tokens(3, 102) == 306
    assert footprint(100, 1022, 256) == Footprint(rows=1, width=102)
    long = footprint(2000, 1022, 256)
    assert long == Footprint(rows=len(plan_windows(2000, 1022, 256)), width=1024)
    assert long.rows == 3 and long.tokens == 3 * 1024


def test_pack_around_takes_the_nearest_widths_first_within_budget_and_fill() -> None:
    anchor = Footprint(rows=1, width=100)
    pool = [Footprint(1, 40), Footprint(1, 98), Footprint(1, 130), Footprint(1, 101)]
    # nearest first: 101 and 98 join; then 130 (429 real of 520) and 40 (339 of 404) fall under 85%
    assert pack_around(anchor, pool, max_tokens=4096, min_fill=0.85) == [3, 1]
    # with no fill floor everything fits 5 x 130 = 650 tokens, in order of distance
    assert pack_around(anchor, pool, max_tokens=4096, min_fill=0.0) == [3, 1, 2, 0]
    # a budget of 3 rows at width 101: the third-nearest (130) would break it, 40 still fits
    assert pack_around(anchor, pool, max_tokens=404, min_fill=0.0) == [3, 1, 0]


def test_pack_around_passes_over_what_does_not_fit_and_keeps_a_lone_long_anchor() -> None:
    windowed = Footprint(rows=3, width=1024)
    pool = [Footprint(1, 1024), Footprint(1, 50)]
    assert pack_around(windowed, pool, max_tokens=4096, min_fill=0.0) == [0]
    too_long = Footprint(rows=6, width=1024)  # alone past the budget: it runs, nothing joins
    assert pack_around(too_long, [Footprint(1, 10)], max_tokens=4096, min_fill=0.0) == []
    assert pack_around(Footprint(1, 10), [], max_tokens=4096, min_fill=0.85) == []


def test_token_batches_pack_by_the_same_cost() -> None:
    sequences = ["M" * n for n in (60, 58, 30, 29, 10)]
    batches = list(
        token_batches(sequences, max_tokens=130, window_residues=62, policy=WindowPolicy())
    )
    assert [[w.item for w in b.windows] for b in batches] == [[0, 1], [2, 3, 4]]
    assert all(padded_tokens(*b.tokens.shape) <= 130 for b in batches)


def test_the_default_overlap_fits_the_window_and_a_given_one_is_checked_up_front() -> None:
    assert WindowPolicy().overlap_in(1022) == 256
    assert WindowPolicy().overlap_in(62) == 15  # a small model's window: a quarter of it
    assert WindowPolicy().describe(1022) == WindowPolicy(overlap=256).describe(1022)
    assert WindowPolicy().resolved(1022) == WindowPolicy(overlap=256).resolved(1022)
    assert WindowPolicy().describe(1022) == "window:1022:256"  # cache keys as they were
    assert WindowPolicy(mode="refuse").describe(1022) == "refuse:1022:256"
    with pytest.raises(InvalidInputError, match="overlap 1022 must be smaller than the window"):
        WindowPolicy(overlap=1022).describe(1022)  # before any record needs a window
    with pytest.raises(
        InvalidInputError, match=r"over half .* up to 1022 windows; give at most 511"
    ):
        WindowPolicy(overlap=1021).describe(1022)
    assert WindowPolicy(overlap=511).describe(1022) == "window:1022:511"
    assert WindowPolicy(mode="refuse", overlap=5000).describe(1022) == "refuse:1022:5000"
