"""FewShotClassifier: layer choice, predictions, the out-of-distribution gate, state, bad support."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protssl.errors import InvalidInputError
from protssl.evaluation import label_metrics
from protssl.fasta import ProteinRecord
from protssl.fewshot import (
    METHODS,
    UNKNOWN,
    FewShotClassifier,
    FewShotConfig,
    require_labels,
)

from .support import sequences, two_layers


@pytest.mark.parametrize("method", METHODS)
def test_methods_beat_chance_on_held_out_transposases(
    method: str,
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    _, query = is_split
    classifier = fitted[method]
    predictions = classifier.predict(
        two_layers(query), [r.id for r in query], sequences=sequences(query)
    )
    metrics = label_metrics([r.labels for r in query], predictions)
    chance = 1 / len({r.labels for r in query})
    assert metrics["top1_accuracy"] > 3 * chance, metrics
    # what it answers, it mostly gets right
    assert metrics["accuracy_on_answered"] > 0.6, metrics
    assert set(classifier.layer_scores) == {1, 2}
    assert classifier.layer_scores[classifier.layer] == max(classifier.layer_scores.values())
    probs = classifier.predict_proba(two_layers(query), sequences(query))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def test_predictions_rank_their_top_labels_by_probability(
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    _, query = is_split
    classifier = fitted["linear"]
    features = two_layers(query)
    probs = classifier.predict_proba(features)
    predictions = classifier.predict(features, top_k=4)
    for row, prediction in enumerate(predictions):
        want = sorted(range(len(classifier.classes)), key=lambda i: -probs[row, i])[:4]
        assert [label for label, _ in prediction.top] == [classifier.classes[i] for i in want]
        assert [p for _, p in prediction.top] == pytest.approx([probs[row, i] for i in want])
        assert prediction.top[0] == (prediction.top_label, prediction.top_probability)
    first = {layer: vectors[:1] for layer, vectors in features.items()}
    only = classifier.predict(first, top_k=1)[0]
    assert only.top == ((predictions[0].top_label, predictions[0].top_probability),)
    with pytest.raises(InvalidInputError, match="top_k"):
        classifier.predict(first, top_k=0)


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip_gives_identical_predictions(
    method: str,
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    _, query = is_split
    classifier = fitted[method]
    params, blob = classifier.to_state()
    restored = FewShotClassifier.from_state(json.loads(json.dumps(params)), blob)
    features = two_layers(query)
    seqs = sequences(query)
    np.testing.assert_array_equal(
        restored.predict_proba(features, seqs), classifier.predict_proba(features, seqs)
    )
    assert restored.predict(features, sequences=seqs) == classifier.predict(
        features, sequences=seqs
    )
    assert restored.layer == classifier.layer


def test_a_label_given_as_a_string_is_one_label_not_its_letters() -> None:
    """`["IS3", ...]` (a string per example) fitted classes I, S, 3; a record's `labels="IS3"` too."""
    rng = np.random.default_rng(0)
    features = {1: rng.normal(size=(6, 8)).astype(np.float32)}
    fitted = FewShotClassifier.fit(features, ["IS3", "IS3", "IS3", "IS5", "IS5", "IS5"])
    assert fitted.classes == ("IS3", "IS5")
    assert ProteinRecord("a", "MKV", "IS3").labels == ProteinRecord("a", "MKV", ["IS3"]).labels


def test_state_is_refused_when_it_is_not_a_classifier(fitted: dict[str, FewShotClassifier]) -> None:
    params, blob = fitted["knn"].to_state()
    with pytest.raises(InvalidInputError, match="not a protssl few-shot classifier"):
        FewShotClassifier.from_state({**params, "format_version": 99}, blob)


@pytest.mark.parametrize("method", METHODS)
def test_out_of_distribution_sequences_are_unknown(
    method: str,
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    pfam_records: list[ProteinRecord],
) -> None:
    """Pfam domains (kinases, fn3, RRM, globins...) are nothing like transposases."""
    _, query = is_split
    classifier = fitted[method]
    ood = classifier.predict(two_layers(pfam_records), sequences=sequences(pfam_records))
    in_dist = classifier.predict(two_layers(query), sequences=sequences(query))
    ood_unknown = np.mean([p.labels == (UNKNOWN,) for p in ood])
    in_unknown = np.mean([p.labels == (UNKNOWN,) for p in in_dist])
    assert ood_unknown > 0.65
    assert ood_unknown > in_unknown + 0.2
    # and the nearest-neighbour gate fires more often on them than on held-out family members
    gate = classifier.ood_threshold
    assert np.mean([p.nearest_similarity < gate for p in ood]) > np.mean(
        [p.nearest_similarity < gate for p in in_dist]
    )


def test_an_unknown_gives_its_top_labels_probability_and_why_it_is_unknown(
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    pfam_records: list[ProteinRecord],
) -> None:
    """An unknown's probability was 0 when the gate turned it away and its top label's when it
    fell under the cut: now always its top label's, with the reason apart."""
    _, query = is_split
    classifier = fitted["knn"]
    records = [*pfam_records, *query]
    predictions = classifier.predict(two_layers(records), sequences=sequences(records))
    unknown = [p for p in predictions if p.status == "unknown"]
    reasons = {p.reason for p in unknown}
    assert reasons == {"out_of_distribution", "below_threshold"}, reasons
    for p in unknown:
        assert p.probability == p.top_probability > 0.0
        gated = p.nearest_similarity < classifier.ood_threshold
        assert p.reason == ("out_of_distribution" if gated else "below_threshold")
        if not gated:
            assert p.probability < classifier.threshold
    assert all(p.reason is None for p in predictions if p.status != "unknown")


def test_the_ood_gate_uses_plain_cosine_and_old_states_keep_the_centred_one(
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    pfam_records: list[ProteinRecord],
) -> None:
    """Centring removes what transposases share; plain cosine keeps it and gates Pfam better."""
    support, query = is_split
    classifier = fitted["knn"]
    layer = classifier.layer
    vectors = two_layers(support)[layer]
    plain = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(classifier.support_nn, plain, rtol=1e-6)

    def gated(c: FewShotClassifier, records: list[ProteinRecord]) -> float:
        return float(np.mean(c.nearest_similarity(two_layers(records)) < c.ood_threshold))

    params, blob = classifier.to_state()
    old = {k: v for k, v in params.items() if k != "ood_centred"}
    centred = FewShotClassifier.fit(
        two_layers(support), [r.labels for r in support], FewShotConfig(method="knn")
    )
    centred.ood_centred = True
    centred.support_nn = centred._vectors(two_layers(support))
    sims = centred.support_nn @ centred.support_nn.T
    np.fill_diagonal(sims, -np.inf)
    centred.ood_threshold = float(np.quantile(sims.max(1), 0.02))
    assert gated(classifier, pfam_records) > gated(centred, pfam_records) + 0.2
    assert gated(classifier, query) <= 0.1
    restored = FewShotClassifier.from_state(old, blob)  # a state written before the change
    assert restored.ood_centred
    centred_sims = restored._vectors(two_layers(query)) @ restored.support_nn.T
    np.testing.assert_array_equal(
        restored.nearest_similarity(two_layers(query)), centred_sims.max(1)
    )


def test_fit_rejects_bad_support() -> None:
    x = {1: np.eye(4)}
    with pytest.raises(InvalidInputError, match=r"^need at least 2 classes, got 1: 'a'$"):
        FewShotClassifier.fit(x, [("a",)] * 4)  # it printed a tuple: ('a',)
    with pytest.raises(InvalidInputError, match="support example #3 has no label"):
        FewShotClassifier.fit(x, [("a",), ("b",), (), ("a",)])
    with pytest.raises(InvalidInputError, match=r"^support example #3 has the label 'unknown'"):
        FewShotClassifier.fit(x, [("a",), ("b",), (UNKNOWN,), ("a",)])
    with pytest.raises(InvalidInputError, match="at least 3 labelled"):
        FewShotClassifier.fit({1: np.eye(2)}, [("a",), ("b",)])
    with pytest.raises(InvalidInputError, match=r"layer 1: expected \(4, D\)"):
        FewShotClassifier.fit({1: np.eye(3)}, [("a",), ("b",), ("a",), ("b",)])
    with pytest.raises(InvalidInputError, match="method must be one of"):
        FewShotConfig(method="svm")  # type: ignore[arg-type]


def test_require_labels_names_the_unlabelled_records_and_their_file() -> None:
    require_labels([("a",), ("b", "c")], ["P1", "P2"])
    with pytest.raises(InvalidInputError, match=r"^x\.fasta: record 'P2' has no label \("):
        require_labels([("a",), (), ("b",)], ["P1", "P2", "P3"], source="x.fasta")
    many = (
        r"^x\.fasta: 5 records have no label: record 'P1', record 'P3', record 'P4' and 2 more \("
    )
    with pytest.raises(InvalidInputError, match=many):
        require_labels(
            [(), ("a",), (), (), (), ()], [f"P{i}" for i in range(1, 7)], source="x.fasta"
        )
    with pytest.raises(InvalidInputError, match=r"^support example #1 has no label"):
        require_labels([()])
    # the abstention's label, named by file and record (it named neither)
    reserved = r"^x\.fasta: record 'P2' has the label 'unknown', which a classifier answers when"
    with pytest.raises(InvalidInputError, match=reserved):
        require_labels([("a",), ("b", "unknown")], ["P1", "P2"], source="x.fasta")
    with pytest.raises(
        InvalidInputError,
        match=r"^2 support examples have no label: support example #1, support example #2 \(",
    ):
        require_labels([(), ()])
