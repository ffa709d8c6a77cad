"""N-way K-shot episodes: sampling, and the part of the pool they use."""

from __future__ import annotations

import pytest

from protssl.errors import InvalidInputError
from protssl.fasta import ProteinRecord
from protssl.fewshot import Episode, sample_episodes, subset_episodes


def test_episodes_sample_disjoint_support_and_query(phosphatases: list[ProteinRecord]) -> None:
    labels = [r.labels for r in phosphatases]
    episodes = sample_episodes(labels, episodes=5, ways=3, shots=4, queries=2, seed=3)
    assert len(episodes) == 5
    for episode in episodes:
        assert len(episode.classes) == 3
        for cls in episode.classes:  # 4 shots and 2 queries of each way, single-label rows only
            assert [labels[i] for i in episode.support].count((cls,)) == 4
            assert [labels[i] for i in episode.query].count((cls,)) == 2
        assert not set(episode.support) & set(episode.query)
    assert episodes == sample_episodes(labels, episodes=5, ways=3, shots=4, queries=2, seed=3)
    assert episodes != sample_episodes(labels, episodes=5, ways=3, shots=4, queries=2, seed=4)
    with pytest.raises(InvalidInputError, match="ways need more"):
        sample_episodes(labels, episodes=1, ways=5, shots=4)


def test_subset_keeps_what_each_episode_sees_and_drops_the_rest() -> None:
    pool = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    episodes = [Episode(("a", "b"), (5, 1), (3,)), Episode(("a", "c"), (1, 6), (5,))]
    used, remapped = subset_episodes(pool, episodes)
    assert used == ["p1", "p3", "p5", "p6"]  # pool order; p0, p2 and p4 are in no episode
    for before, after in zip(episodes, remapped, strict=True):
        assert after.classes == before.classes
        assert [used[i] for i in after.support] == [pool[i] for i in before.support]
        assert [used[i] for i in after.query] == [pool[i] for i in before.query]
    assert subset_episodes(pool, []) == ([], [])
