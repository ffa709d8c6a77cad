"""Few-shot evaluation: label metrics, calibration bins, the composition anchor, split and
episodic evaluation, and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protssl.evaluation import (
    composition_features,
    evaluate_episodes,
    evaluate_split,
    label_metrics,
    nn1_hits,
    per_class_metrics,
    reliability,
    sample_episodes,
    segment_composition_features,
    t_quantile_975,
    write_report,
)
from protssl.fasta import ProteinRecord
from protssl.fewshot import UNKNOWN, FewShotConfig, Prediction

from .support import two_layers


def _p(labels: tuple[str, ...], status: str, top: str, top_p: float = 0.9) -> Prediction:
    return Prediction("q", labels, top_p, status, top, top_p, 0.5)  # type: ignore[arg-type]


def test_label_metrics_match_hand_computed_values() -> None:
    truth = [("A",), ("B", "C"), ("A",), ("1.1.1.1",), ("D",)]
    predictions = [
        _p(("A",), "answered", "A"),  # tp A
        _p(("B", "D"), "answered", "B"),  # tp B, fp D, fn C
        _p((UNKNOWN,), "unknown", "A", 0.3),  # fn A; forced choice right
        _p(("1.1.1.-",), "backed_off", "1.1.1.2", 0.4),  # fn 1.1.1.1; parent right
        _p(("A",), "answered", "A"),  # fp A, fn D
    ]
    m = label_metrics(truth, predictions)
    # tp=2, fp=2, fn=4
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 6)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["top1_accuracy"] == pytest.approx(3 / 5)
    assert m["abstention_rate"] == pytest.approx(1 / 5)
    assert m["backoff_rate"] == pytest.approx(1 / 5)
    assert m["backoff_precision"] == 1.0
    assert m["answered_rate"] == pytest.approx(3 / 5)
    assert m["accuracy_on_answered"] == pytest.approx(2 / 3)
    per_class = per_class_metrics(truth, predictions)
    assert per_class["A"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert per_class["D"] == {"precision": 0.0, "recall": 0.0, "support": 1}


def test_backoff_precision_is_not_applicable_without_back_offs_and_zero_when_all_are_wrong() -> (
    None
):
    """It read 0.0 when nothing backed off (flat labels, or no query that needed a parent): as if
    every back-off had been wrong."""
    truth = [("1.1.1.1",), ("2.1.1.1",)]
    answered = [_p(("1.1.1.1",), "answered", "1.1.1.1"), _p((UNKNOWN,), "unknown", "1.1.1.1")]
    assert label_metrics(truth, answered)["backoff_precision"] is None
    assert label_metrics(truth, answered)["backoff_rate"] == 0.0
    wrong = [answered[0], _p(("1.1.1.-",), "backed_off", "1.1.1.1", 0.4)]
    assert label_metrics(truth, wrong)["backoff_precision"] == 0.0
    assert label_metrics([], [])["backoff_precision"] is None


def test_accuracy_on_answered_is_not_applicable_when_nothing_was_answered() -> None:
    """It read 0.0 when every query abstained or backed off: as if every answer had been wrong."""
    truth = [("1.1.1.1",), ("2.1.1.1",)]
    none = [_p((UNKNOWN,), "unknown", "1.1.1.1"), _p(("2.1.1.-",), "backed_off", "2.1.1.1", 0.4)]
    assert label_metrics(truth, none)["accuracy_on_answered"] is None
    assert label_metrics(truth, none)["answered_rate"] == 0.0
    wrong = [_p(("2.1.1.1",), "answered", "2.1.1.1"), none[1]]
    assert label_metrics(truth, wrong)["accuracy_on_answered"] == 0.0


def test_reliability_bins_and_calibration_error() -> None:
    table, ece = reliability(np.array([0.95, 0.95, 0.15, 0.15]), np.array([1, 0, 0, 0]))
    assert [row["count"] for row in table] == [2, 2]
    assert table[1]["accuracy"] == 0.5
    assert ece == pytest.approx(0.5 * 0.15 + 0.5 * 0.45)


def test_nn1_hits_use_the_nearest_other_record_by_centred_cosine() -> None:
    vectors = np.array([[1.0, 0.1], [0.9, 0.0], [-1.0, 0.2], [0.0, 1.0]])
    labels = [{"a"}, {"a"}, {"b"}, {"b", "c"}]
    # centred on the mean (0.225, 0.325): 0 and 1 point one way, 2 another, 3 nearest to 2
    np.testing.assert_array_equal(nn1_hits(vectors, labels), [True, True, True, True])
    np.testing.assert_array_equal(
        nn1_hits(vectors, [{"a"}, {"b"}, {"b"}, {"c"}]), [False, False, False, False]
    )


def test_composition_features_count_residues_and_pairs() -> None:
    x = composition_features(["AAC", "AXA"])
    assert x[0, 0] == pytest.approx(2 / 3) and x[0, 1] == pytest.approx(1 / 3)
    assert x[0, 20 + 0 * 20 + 0] == pytest.approx(0.5)  # AA
    assert x[0, 20 + 0 * 20 + 1] == pytest.approx(0.5)  # AC
    assert x[1, :20].sum() == pytest.approx(1.0)
    assert x[1, 20:].sum() == 0.0  # X breaks both pairs


def test_segment_composition_is_the_composition_of_each_stretch_end_to_end() -> None:
    x = segment_composition_features(["AACCDDEE", "MK"])
    assert x.shape == (2, 4 * 420)
    stretches = x[0].reshape(4, 420)
    np.testing.assert_array_equal(stretches, composition_features(["AA", "CC", "DD", "EE"]))
    assert stretches[1, 1] == 1.0 and stretches[1, 20 + 1 * 20 + 1] == 1.0  # C, then CC
    # a protein shorter than the stretches: each holds one residue, so no pairs
    np.testing.assert_array_equal(x[1].reshape(4, 420), composition_features(["M", "M", "K", "K"]))


def test_split_evaluation_and_report_write_png_markdown_and_html(
    tmp_path: Path, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    support, query = is_split
    result = evaluate_split(
        two_layers(support),
        [r.labels for r in support],
        two_layers(query),
        [r.labels for r in query],
        FewShotConfig(method="prototype"),
    )
    assert result.metrics["n"] == len(query)
    assert result.metrics["layer"] == result.layers[0]
    page = write_report(tmp_path / "report", result)
    for name in ("embedding_pca.png", "reliability.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"| {query[0].labels[0]} |" in markdown
    assert f"| top1_accuracy | {result.metrics['top1_accuracy']:.3f} |" in markdown
    assert "reliability.png" in page.read_text()


def test_episodic_evaluation_pools_episodes(phosphatases: list[ProteinRecord]) -> None:
    labels = [r.labels for r in phosphatases]
    episodes = sample_episodes(labels, episodes=4, ways=3, shots=3, queries=2, seed=0)
    result = evaluate_episodes(two_layers(phosphatases), labels, episodes, FewShotConfig())
    assert result.metrics["n"] == 4 * 3 * 2 == len(result.predictions)
    assert result.metrics["episodes"] == 4 and len(result.layers) == 4
    features = two_layers(phosphatases)
    alone = [
        evaluate_split(
            {k: v[list(e.support)] for k, v in features.items()},
            [labels[i] for i in e.support],
            {k: v[list(e.query)] for k, v in features.items()},
            [labels[i] for i in e.query],
            FewShotConfig(),
        )
        for e in episodes
    ]
    assert result.predictions == [p for one in alone for p in one.predictions]
    assert result.layers == [one.layers[0] for one in alone]
    top1 = [one.metrics["top1_accuracy"] for one in alone]
    assert result.metrics["episode_top1_mean"] == pytest.approx(np.mean(top1))
    # every episode has as many queries, so the pooled accuracy is the mean of the episodes'
    assert result.metrics["top1_accuracy"] == pytest.approx(result.metrics["episode_top1_mean"])
    # a Student-t interval at 3 degrees of freedom (3.182 standard errors), not 1.96's
    half = 3.182446 * np.std(top1, ddof=1) / np.sqrt(4)
    assert result.metrics["episode_top1_ci95"] == pytest.approx(half)


def test_one_episode_gives_no_interval_and_a_few_give_the_student_t_one(
    phosphatases: list[ProteinRecord],
) -> None:
    """`--episodes 1` reported an interval of 0.0, as if one episode had no uncertainty: it has
    no estimate of it (None: JSON null, `n/a` in tables). 3 episodes took 1.96 standard errors
    where Student's t at 2 degrees of freedom takes 4.303 (0.065 against 0.143 in one run)."""
    labels = [r.labels for r in phosphatases]
    features = two_layers(phosphatases)
    one = sample_episodes(labels, episodes=1, ways=3, shots=3, queries=2, seed=0)
    assert (
        evaluate_episodes(features, labels, one, FewShotConfig()).metrics["episode_top1_ci95"]
        is None
    )
    three = sample_episodes(labels, episodes=3, ways=3, shots=3, queries=2, seed=1)
    metrics = evaluate_episodes(features, labels, three, FewShotConfig()).metrics
    top1 = [
        evaluate_episodes(features, labels, [e], FewShotConfig()).metrics["top1_accuracy"]
        for e in three
    ]
    assert np.std(top1, ddof=1) > 0  # an interval with a width to compare
    assert metrics["episode_top1_ci95"] == pytest.approx(
        4.302653 * np.std(top1, ddof=1) / np.sqrt(3)
    )


def test_t_quantile_matches_the_published_table() -> None:
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281,
             20: 2.0860, 29: 2.0452, 30: 2.0423, 60: 2.0003, 120: 1.9799, 1000: 1.9623}  # fmt: skip
    for df, quantile in table.items():
        assert t_quantile_975(df) == pytest.approx(quantile, abs=1e-4), df
