"""`segments` pooling: which residues each stretch holds, and the layout of several layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protssl.errors import InvalidInputError
from protssl.pooling import SEGMENTS, pooled_width, segment_bounds, segment_means


@pytest.mark.parametrize("length", range(SEGMENTS, 60))
def test_stretches_cover_every_residue_once_in_order_and_differ_by_at_most_one(
    length: int,
) -> None:
    bounds = segment_bounds(length)
    assert len(bounds) == SEGMENTS
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(bounds))
    sizes = [end - start for start, end in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    for i in range(length):  # residue i is in stretch floor(i * SEGMENTS / length)
        start, end = bounds[i * SEGMENTS // length]
        assert start <= i < end


@pytest.mark.parametrize("length", range(1, SEGMENTS))
def test_a_protein_shorter_than_the_stretches_gives_each_one_residue(length: int) -> None:
    bounds = segment_bounds(length)
    assert bounds == [(j * length // SEGMENTS, j * length // SEGMENTS + 1) for j in range(SEGMENTS)]
    assert {start for start, _ in bounds} == set(range(length))


def test_no_residues_is_the_callers_error() -> None:
    with pytest.raises(InvalidInputError, match="at least one residue"):
        segment_bounds(0)


def test_segment_means_are_each_layers_stretch_means_end_to_end() -> None:
    rng = np.random.default_rng(0)
    layer_a, layer_b = rng.normal(size=(2, 10, 3))
    vector = segment_means(np.concatenate([layer_a, layer_b], axis=1), groups=2)
    assert vector.shape == (2 * pooled_width("segments", 3),) and vector.dtype == np.float32
    first, second = np.split(vector, 2)
    for layer, part in ((layer_a, first), (layer_b, second)):
        want = np.concatenate([layer[a:b].mean(0) for a, b in segment_bounds(10)])
        np.testing.assert_allclose(part, want, rtol=1e-6)
    np.testing.assert_array_equal(first, segment_means(layer_a))
    assert pooled_width("mean", 3) == pooled_width("bos", 3) == 3
