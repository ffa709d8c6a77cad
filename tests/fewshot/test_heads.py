"""The scoring heads: exact leave-one-out scores, and training that leaves torch's settings alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protssl.fasta import ProteinRecord
from protssl.fewshot import FewShotConfig
from protssl.fewshot.heads import HEADS, multi_hot, normalise

from .support import two_layers


def _support(
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> tuple[np.ndarray, np.ndarray]:
    support = is_split[0]
    x = two_layers(support)[2]
    classes = sorted({label for r in support for label in r.labels})
    return normalise(x, x.mean(0)), multi_hot([r.labels for r in support], classes)


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_closed_form_held_out_scores_are_exact_leave_one_out(
    method: str, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    """Each row's held-out scores are those of the head refitted without that row."""
    x, y = _support(is_split)
    config = FewShotConfig(method=method, k=3)  # type: ignore[arg-type]
    held_out = HEADS[method]().held_out(x, y, config)
    for row in (0, 7, len(x) - 1):
        rest = np.arange(len(x)) != row
        head = HEADS[method]()
        head.fit(x[rest], y[rest], config)
        np.testing.assert_allclose(held_out[row], head.scores(x[row : row + 1])[0], atol=1e-9)


@pytest.mark.parametrize("method", ["linear", "contrastive"])
def test_trained_heads_fit_their_support_and_leave_torch_threads_alone(
    method: str, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    x, y = _support(is_split)
    config = FewShotConfig(method=method)  # type: ignore[arg-type]
    original = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            head = HEADS[method]()
            head.fit(x, y, config)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(original)
    assert (y[np.arange(len(y)), head.scores(x).argmax(1)] > 0).mean() > 0.9
