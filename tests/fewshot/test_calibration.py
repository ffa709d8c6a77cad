"""Calibration and abstention: the precision threshold, EC back-off, multi-label support."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protssl.errors import InvalidInputError
from protssl.evaluation import label_metrics
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import UNKNOWN, FewShotClassifier, FewShotConfig, Prediction, save_classifier
from protssl.fewshot.calibration import (
    back_off_levels,
    best_precision,
    calibrate,
    precision_threshold,
    softmax,
)
from protssl.store import Store, StoreConfig

from .support import enzyme_slice, two_layers


def test_abstention_threshold_reaches_the_target_or_comes_closest() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    # answering the top two is 100% precise; the third would drop precision to 2/3
    assert precision_threshold(confidence, np.array([1, 1, 0, 1]), 0.9) == 0.8
    # no cut reaches 0.9; the most precise cuts (1/2) are 0.8 and 0.6: the lower answers more
    assert precision_threshold(confidence, np.array([0, 1, 0, 1]), 0.9) == 0.6
    # here the best micro-F1 cut (answer all 8 at precision 3/8) is not the most precise one
    confidence = np.linspace(0.9, 0.2, 8)
    correct = np.array([0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    assert precision_threshold(confidence, correct, 0.9) == pytest.approx(0.7)  # 2 of 3
    assert best_precision(confidence, correct) == pytest.approx(2 / 3)
    assert best_precision(confidence[:0], correct[:0]) == 0.0


def test_a_higher_target_never_answers_more() -> None:
    rng = np.random.default_rng(0)
    targets = np.linspace(0.05, 1.0, 40)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        confidence = rng.choice(np.linspace(0.1, 1.0, 10), n)  # ties included
        correct = rng.random(n) < rng.random()
        cuts = [precision_threshold(confidence, correct, float(t)) for t in targets]
        assert cuts == sorted(cuts), (confidence, correct)


def test_calibration_makes_the_top_probability_match_held_out_accuracy() -> None:
    y = np.eye(2)[[0, 0, 0, 1, 1, 1]]
    scores = np.eye(2)[[0, 0, 1, 1, 1, 1]]  # 5 of 6 rows right, each by a margin of 1
    temperature = calibrate(scores, y)
    # the likelihood is best where p(top) = 5/6, i.e. T = 1 / ln 5, up to the grid's step
    assert softmax(scores, temperature).max(1) == pytest.approx(np.full(6, 5 / 6), abs=0.01)
    assert calibrate(scores * 100.0, y) == pytest.approx(100.0 * temperature)
    # every row right: the sharpest temperature on offer wins
    assert calibrate(np.eye(2)[[0, 0, 0, 1, 1, 1]], y) == pytest.approx(1e-3)


def test_back_off_levels_map_each_leaf_to_its_parents() -> None:
    classes = ["1.1.1.1", "1.1.1.2", "1.2.1.1", "2.1.1.1"]
    levels = back_off_levels(classes, True)
    assert [(lv.depth, lv.parents) for lv in levels] == [
        (3, ["1.1.1.-", "1.2.1.-", "2.1.1.-"]),
        (2, ["1.1.-.-", "1.2.-.-", "2.1.-.-"]),
        (1, ["1.-.-.-", "2.-.-.-"]),
    ]
    np.testing.assert_array_equal(levels[0].member.argmax(1), [0, 0, 1, 2])
    np.testing.assert_array_equal(levels[2].member.argmax(1), [0, 0, 0, 1])
    assert back_off_levels(classes, False) == []


def test_hierarchical_labels_back_off_to_the_parent_when_siblings_are_indistinguishable(
    is_records: dict[str, list[ProteinRecord]], shared_file: Callable[..., Path]
) -> None:
    """One IS family's sequences split at random into two sibling EC-style labels can't be told
    apart, but their shared parent can: queries from it back off to 1.1.1.-, rarely guess a leaf."""
    shared_file(
        "families/prokka_IS_transposase_families.fasta", "40 per family; examples/ holds 20"
    )
    rng = np.random.default_rng(1)
    families = sorted(f for f, rows in is_records.items() if len(rows) >= 40)[:3]
    names = {families[1]: "1.2.1.1", families[2]: "2.1.1.1"}
    support: list[ProteinRecord] = []
    labels: list[tuple[str, ...]] = []
    query: list[ProteinRecord] = []
    for family in families:
        rows = [is_records[family][i] for i in rng.permutation(len(is_records[family]))[:40]]
        for index, record in enumerate(rows[:24]):
            support.append(record)
            if family == families[0]:
                labels.append(("1.1.1.1",) if index % 2 else ("1.1.1.2",))
            else:
                labels.append((names[family],))
        if family == families[0]:
            query += rows[24:]
    classifier = FewShotClassifier.fit(
        two_layers(support), labels, FewShotConfig(method="prototype", ood_quantile=0.0)
    )
    assert [level.depth for level in classifier.levels] == [3, 2, 1]
    predictions = classifier.predict(two_layers(query))
    statuses = [p.status for p in predictions]
    assert statuses.count("backed_off") >= len(query) // 2, statuses
    assert all(p.labels == ("1.1.1.-",) for p in predictions if p.status == "backed_off")
    metrics = label_metrics([("1.1.1.1",)] * len(query), predictions)
    assert metrics["backoff_precision"] == 1.0
    # a parent probability is the sum over its children
    probs = classifier.predict_proba(two_layers(query))
    backed = next(i for i, p in enumerate(predictions) if p.status == "backed_off")
    siblings = [classifier.classes.index(c) for c in ("1.1.1.1", "1.1.1.2")]
    assert predictions[backed].probability == pytest.approx(probs[backed, siblings].sum())


def test_flat_labels_never_back_off(fitted: dict[str, FewShotClassifier]) -> None:
    assert fitted["prototype"].levels == []
    with pytest.raises(InvalidInputError, match="dotted labels"):
        FewShotClassifier.fit(
            {1: np.eye(4)}, [("a",), ("b",), ("a",), ("b",)], FewShotConfig(hierarchical="yes")
        )


def test_multi_label_support_predicts_both_labels(phosphatases: list[ProteinRecord]) -> None:
    dual = ("3.1.3.16", "3.1.3.48")
    assert sum(r.labels == dual for r in phosphatases) == 20
    support, query = phosphatases[::2], phosphatases[1::2]
    classifier = FewShotClassifier.fit(
        two_layers(support),
        [r.labels for r in support],
        FewShotConfig(method="knn", hierarchical="no", ood_quantile=0.0, target_precision=0.5),
    )
    assert classifier.multi_label_ratio is not None
    predictions = classifier.predict(two_layers(query), [r.id for r in query])
    assert any(len(p.labels) == 2 for p in predictions)
    assert all(p.labels == (UNKNOWN,) or len(set(p.labels)) == len(p.labels) for p in predictions)
    multi = label_metrics([r.labels for r in query], predictions)
    top_only = [Prediction(**{**p.as_dict(), "labels": p.labels[:1]}) for p in predictions]
    single = label_metrics([r.labels for r in query], top_only)
    assert multi["recall"] > single["recall"]
    assert multi["f1"] >= single["f1"]


def test_a_strict_cut_never_answers_when_no_cut_reaches_the_target() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([False, True, True, False])
    assert precision_threshold(confidence, correct, 0.95) == 0.7  # the most precise cut answers
    assert precision_threshold(confidence, correct, 0.95, strict=True) > 1.0
    assert precision_threshold(confidence, correct, 0.5, strict=True) == 0.6
    assert precision_threshold(confidence[:0], correct[:0], 0.5) > 1.0


def test_an_unreachable_target_answers_only_the_most_precise_cut_on_real_enzymes(
    shared_file: Callable[..., Path],
) -> None:
    support = enzyme_slice(shared_file("ec/clean_split10.fasta"))
    answered, precise = [], []
    for target in (0.5, 0.7, 0.8, 0.9, 0.99):
        config = FewShotConfig(method="knn", target_precision=target)
        metrics = FewShotClassifier.fit(
            two_layers(support), [r.labels for r in support], config
        ).support_metrics
        answered.append(metrics["answered_rate"])
        precise.append(metrics["accuracy_on_answered"])
    assert metrics["best_precision"] < 0.9
    assert answered == sorted(answered, reverse=True) and answered[-1] < answered[0] / 3
    assert answered[-1] == answered[-2]  # both out of reach: the same, most precise cut
    assert precise[-1] == pytest.approx(metrics["best_precision"])
    assert precise == sorted(precise)


def _transferases(
    clean_split10: Path, pick: slice
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """5 support and 3 query sequences of each of 8 single-label EC-4 classes of CLEAN split10,
    all transferases (EC 2.): `pick` of the 48 with 8 or more sequences, in label order."""
    by_label: dict[str, list[ProteinRecord]] = defaultdict(list)
    for record in read_fasta(clean_split10, policy=FastaPolicy(on_invalid="skip")):
        if len(record.labels) == 1 and record.labels[0].startswith("2."):
            by_label[record.labels[0]].append(record)
    classes = sorted(label for label, rows in by_label.items() if len(rows) >= 8)[pick]
    assert len(classes) == 8
    return (
        [r for label in classes for r in by_label[label][:5]],
        [r for label in classes for r in by_label[label][5:8]],
    )


def test_back_off_never_offers_the_one_parent_every_class_shares(
    shared_file: Callable[..., Path],
) -> None:
    """8 EC classes all under 2. had a depth-1 level with the one parent 2.-.-.- (its held-out cut
    ~1.0, its summed probability always 1): 12 of 24 queries backed off to it, each a sure 'right'
    back-off that says nothing (2 of 4 in one fewshot-eval's backoff_precision). Only levels of
    two or more parents are offered; a query that reaches none is unknown (below_threshold)."""
    assert back_off_levels(["2.1.1.113", "2.7.7.6"], True)[-1].depth == 2  # no 2.-.-.- level
    assert back_off_levels(["2.1.1.113", "2.1.1.72"], True) == []  # all one 2.1.1.-
    clean_split10 = shared_file("ec/clean_split10.fasta")
    support, query = _transferases(clean_split10, slice(None, None, 6))  # 2.1, 2.3, 2.4, 2.7
    labels = [r.labels for r in support]
    classifier = FewShotClassifier.fit(two_layers(support), labels, FewShotConfig(method="knn"))
    assert [(level.depth, len(level.parents)) for level in classifier.levels] == [(3, 6), (2, 4)]
    predictions = classifier.predict(two_layers(query))
    backed = [p.labels[0] for p in predictions if p.status == "backed_off"]
    assert backed and "2.-.-.-" not in backed
    unsure = [p for p in predictions if p.status == "unknown"]
    assert any(p.reason == "below_threshold" for p in unsure)
    metrics = label_metrics([r.labels for r in query], predictions)
    assert metrics["backoff_rate"] == len(backed) / len(query)

    # eight methyltransferases, all 2.1.1: no level tells them apart, so none backs off
    support, query = _transferases(clean_split10, slice(0, 8))
    classifier = FewShotClassifier.fit(
        two_layers(support), [r.labels for r in support], FewShotConfig(method="knn")
    )
    assert classifier.levels == []
    predictions = classifier.predict(two_layers(query))
    assert {p.status for p in predictions} <= {"answered", "unknown"}
    assert label_metrics([r.labels for r in query], predictions)["backoff_precision"] is None


def test_a_classifier_saved_with_a_single_parent_level_loads_without_it(
    shared_file: Callable[..., Path], tmp_path: Path
) -> None:
    """A version saved before holds the 2.-.-.- level: loading drops it, as a refit would (the
    stored parameters stay as they are), so it decides as the refit does and `classifier show`
    (`StoredClassifier.cuts`) lists the levels it decides with."""
    support, query = _transferases(shared_file("ec/clean_split10.fasta"), slice(None, None, 6))
    classifier = FewShotClassifier.fit(
        two_layers(support), [r.labels for r in support], FewShotConfig(method="knn")
    )
    params, blob = classifier.to_state()
    with np.load(io.BytesIO(blob)) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[f"level{len(classifier.levels)}.member"] = np.ones((len(classifier.classes), 1))
    old_level = {"depth": 1, "parents": ["2.-.-.-"], "threshold": 0.5}  # catches every query
    old_params = {**params, "levels": [*params["levels"], old_level]}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    old = FewShotClassifier.from_state(old_params, buffer.getvalue())
    assert [lv.parents for lv in old.levels] == [lv.parents for lv in classifier.levels]
    refit = classifier.predict(two_layers(query))
    assert old.predict(two_layers(query)) == refit
    assert any(p.reason == "below_threshold" for p in refit)  # what the 2.-.-.- level caught
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'store.sqlite3'}")) as store:
        stored = save_classifier(store, "ec", classifier, support)
    shown = replace(stored, params=old_params).cuts["back_off_levels"]
    assert shown == stored.cuts["back_off_levels"]
    assert [level["parents"] for level in shown] == [6, 4]
