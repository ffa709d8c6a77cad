"""Geometry metrics on hand-made vectors whose values are known, and the two augmented views."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protssl.analysis.geometry import (
    alignment,
    effective_rank,
    knn_purity,
    two_views,
    uniformity,
    unit_vectors,
)


def test_uniformity_is_zero_for_identical_vectors_and_known_for_opposite_ones() -> None:
    same = np.tile([[0.6, 0.8]], (5, 1))
    assert uniformity(same) == pytest.approx(0.0)
    # two antipodal unit vectors: |a - b|^2 = 4, so log exp(-2 x 4) = -8
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    # the 4 corners of a square on the unit circle: pairs at d^2 = 2 (x4) and 4 (x2)
    square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert uniformity(square) == pytest.approx(expected)
    with pytest.raises(ValueError, match="two vectors"):
        uniformity(same[:1])


def test_alignment_is_the_mean_squared_distance_of_the_paired_views() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert alignment(a, a) == 0.0
    b = np.array([[0.0, 1.0], [0.0, -1.0]])  # d^2 = 2 and 4
    assert alignment(a, b) == pytest.approx(3.0)
    assert alignment(a, b, alpha=1.0) == pytest.approx((math.sqrt(2) + 2) / 2)
    with pytest.raises(ValueError, match="pair up"):
        alignment(a, b[:1])


def test_effective_rank_counts_the_directions_used() -> None:
    rank_one = np.outer(np.arange(1.0, 9.0), [1.0, 2.0, -1.0, 0.5])  # (8, 4) of rank 1
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(np.eye(6)) == pytest.approx(6.0, abs=1e-4)
    # two equal singular values and nothing else: exactly 2
    assert effective_rank(np.diag([3.0, 3.0, 0.0])) == pytest.approx(2.0, abs=1e-4)
    assert effective_rank(np.zeros((3, 3))) == 0.0


def test_purity_of_a_perfect_and_of_a_useless_clustering() -> None:
    labels = ["a"] * 4 + ["b"] * 4
    tight = np.array([[1.0, 0.01 * i] for i in range(4)] + [[0.01 * i, 1.0] for i in range(4)])
    assert knn_purity(unit_vectors(tight), labels, k=3) == 1.0
    # a (label) checkerboard along a circle: each point's 2 neighbours carry the other label
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert knn_purity(circle, ["a", "b"] * 4, k=2) == 0.0
    assert knn_purity(circle, ["a"] * 8, k=50) == 1.0  # k capped at n - 1


def test_unit_vectors_are_centred_and_normalised() -> None:
    x = np.array([[10.0, 1.0], [10.0, 3.0], [12.0, 2.0]])
    u = unit_vectors(x)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    np.testing.assert_allclose(u[0], [-2 / 3, -1] / np.linalg.norm([-2 / 3, -1]))


def test_two_views_are_seeded_crops_with_few_substitutions() -> None:
    sequences = ["ACDEFGHIKLMNPQRSTVWY" * 10, "MKV"]
    first, second = two_views(sequences, crop_fraction=0.5, max_residues=64, seed=3)
    assert (first, second) == two_views(sequences, crop_fraction=0.5, max_residues=64, seed=3)
    assert [len(v) for v in first] == [64, 2] and [len(v) for v in second] == [64, 2]
    clean_first, _ = two_views(sequences, crop_fraction=0.5, max_residues=64, substitution=0.0)
    assert clean_first[0] in sequences[0] and clean_first[1] in sequences[1]
    assert first != second
