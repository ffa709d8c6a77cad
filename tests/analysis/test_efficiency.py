"""k-mer features, few-shot draws and learning curves on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from protssl.analysis.efficiency import (
    fewshot_accuracy,
    fewshot_draws,
    kmer_features,
    learning_curve,
)
from protssl.evaluation import composition_features


def test_kmer_features_count_every_window_of_standard_residues() -> None:
    x = kmer_features(["AAAC", "AXAA", "A"], k=2)
    assert x.shape == (3, 400)
    aa, ac = 0, 1  # A = 0, C = 1 in AMINO_ACIDS
    assert x[0, aa] == pytest.approx(2 / 3) and x[0, ac] == pytest.approx(1 / 3)
    assert x[1, aa] == 1.0 and x[1].sum() == 1.0  # AX and XA are skipped
    assert x[2].sum() == 0.0  # shorter than k
    # k = 1 and 2 agree with the composition features
    sequences = ["MKVLAAGIC", "WWYYPPQ"]
    np.testing.assert_allclose(
        kmer_features(sequences, k=1), composition_features(sequences)[:, :20]
    )
    np.testing.assert_allclose(
        kmer_features(sequences, k=2), composition_features(sequences)[:, 20:]
    )


def test_draws_hold_out_queries_and_keep_only_big_enough_classes() -> None:
    labels = ["a"] * 6 + ["b"] * 5 + ["c"] * 3
    classes, draws = fewshot_draws(labels, max_shots=3, queries=2, draws=4, seed=1)
    assert classes == ("a", "b")  # c has 3 < 3 + 2 records
    assert len(draws) == 4 and draws[0] != draws[1]
    for draw in draws:
        assert draw.query_classes == (0, 0, 1, 1)
        for index, rows in enumerate(draw.support_order):
            assert not set(rows) & set(draw.queries)
            assert {labels[r] for r in rows} == {classes[index]}
    assert fewshot_draws(labels, max_shots=3, queries=2, draws=4, seed=1) == (classes, draws)
    with pytest.raises(ValueError, match="fewer than two classes"):
        fewshot_draws(labels, max_shots=5, queries=2)


def test_separable_features_score_one_and_constant_features_chance() -> None:
    labels = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    separable = np.repeat(np.eye(3), 5, axis=0) + 0.01 * np.arange(15)[:, None]
    _, draws = fewshot_draws(labels, max_shots=2, queries=3, draws=3)
    assert fewshot_accuracy(separable, draws[0], 1) == 1.0
    curve = learning_curve(separable, draws, shots=(1, 2))
    assert curve.mean == (1.0, 1.0) and curve.std == (0.0, 0.0) and curve.area == 1.0
    constant = learning_curve(np.ones((15, 4)), draws, shots=(1, 2))
    assert constant.mean == pytest.approx((1 / 3, 1 / 3))  # every query goes to the first class
