"""Few-shot classifiers and their evaluation, on real labelled proteins (see conftest.py).

The heads are unit-tested on amino-acid + dipeptide composition vectors (they carry real family
signal and cost nothing to compute); the model path is tested with a tiny random-weight encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event

from protssl.checkpoint import LoadedModel, load_model, save_model
from protssl.cli import build_parser
from protssl.embed import EmbedConfig, embed_records, embed_records_layers
from protssl.errors import ClassifierNotFoundError, InvalidInputError
from protssl.evaluation import (
    composition_features,
    evaluate_episodes,
    evaluate_split,
    label_metrics,
    nn1_hits,
    per_class_metrics,
    reliability,
    sample_episodes,
    write_report,
)
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import (
    METHODS,
    UNKNOWN,
    ClassifierCache,
    FewShotClassifier,
    FewShotConfig,
    Prediction,
    classify_records,
    fit_records,
    load_classifier,
    save_classifier,
)
from protssl.model import ModelConfig, ProteinEncoder, init_weights
from protssl.store import Store, StoreConfig

FAMILIES = 8


def _features(records: list[ProteinRecord]) -> dict[int, np.ndarray]:
    """Two 'layers' of composition vectors: raw and square-rooted (a variance-stabilised view)."""
    x = composition_features([r.sequence for r in records])
    return {1: x, 2: np.sqrt(x)}


@pytest.fixture(scope="module")
def is_records(transposase_fastas: list[Path]) -> dict[str, list[ProteinRecord]]:
    by_family: dict[str, list[ProteinRecord]] = defaultdict(list)
    for path in transposase_fastas:
        for record in read_fasta(path, policy=FastaPolicy(on_invalid="skip")):
            by_family[record.labels[0]].append(record)
    return by_family


@pytest.fixture(scope="module")
def is_split(
    is_records: dict[str, list[ProteinRecord]],
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """8 support and 6 query transposases from each of 8 IS families (whole sequences held out;
    the 6 families of examples/ on a clone without the shared data)."""
    rng = np.random.default_rng(0)
    families = sorted(f for f, rows in is_records.items() if len(rows) >= 20)[:FAMILIES]
    support, query = [], []
    for family in families:
        order = rng.permutation(len(is_records[family]))
        support += [is_records[family][i] for i in order[:8]]
        query += [is_records[family][i] for i in order[8:14]]
    return support, query


@pytest.fixture(scope="module")
def pfam_records(shared_file: Callable[..., Path]) -> list[ProteinRecord]:
    return list(read_fasta(shared_file("families/pfam_seed_small.fasta")))


@pytest.fixture(scope="module")
def fitted(
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> dict[str, FewShotClassifier]:
    support, _ = is_split
    return {
        method: FewShotClassifier.fit(
            _features(support), [r.labels for r in support], FewShotConfig(method=method)
        )
        for method in METHODS
    }


@pytest.mark.parametrize("method", METHODS)
def test_methods_beat_chance_on_held_out_transposases(
    method: str,
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    _, query = is_split
    classifier = fitted[method]
    predictions = classifier.predict(_features(query), [r.id for r in query])
    metrics = label_metrics([r.labels for r in query], predictions)
    chance = 1 / len({r.labels for r in query})
    assert metrics["top1_accuracy"] > 3 * chance, metrics
    # what it answers, it mostly gets right
    assert metrics["accuracy_on_answered"] > 0.6, metrics
    assert classifier.layer in (1, 2)
    assert set(classifier.layer_scores) == {1, 2}
    assert classifier.layer_scores[classifier.layer] == max(classifier.layer_scores.values())
    probs = classifier.predict_proba(_features(query))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def test_predictions_rank_their_top_labels_by_probability(
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:
    _, query = is_split
    classifier = fitted["linear"]
    features = _features(query)
    probs = classifier.predict_proba(features)
    predictions = classifier.predict(features, top_k=4)
    for row, prediction in enumerate(predictions):
        want = sorted(range(len(classifier.classes)), key=lambda i: -probs[row, i])[:4]
        assert [label for label, _ in prediction.top] == [classifier.classes[i] for i in want]
        assert [p for _, p in prediction.top] == pytest.approx([probs[row, i] for i in want])
        assert prediction.top[0] == (prediction.top_label, prediction.top_probability)
    first = {layer: vectors[:1] for layer, vectors in features.items()}
    assert len(classifier.predict(first, top_k=1)[0].top) == 1
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
    features = _features(query)
    np.testing.assert_array_equal(
        restored.predict_proba(features), classifier.predict_proba(features)
    )
    assert restored.predict(features) == classifier.predict(features)
    assert restored.layer == classifier.layer


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
    ood = classifier.predict(_features(pfam_records))
    in_dist = classifier.predict(_features(query))
    ood_unknown = np.mean([p.labels == (UNKNOWN,) for p in ood])
    in_unknown = np.mean([p.labels == (UNKNOWN,) for p in in_dist])
    assert ood_unknown > 0.65
    assert ood_unknown > in_unknown + 0.2
    # and the nearest-neighbour gate fires more often on them than on held-out family members
    gate = classifier.ood_threshold
    assert np.mean([p.nearest_similarity < gate for p in ood]) > np.mean(
        [p.nearest_similarity < gate for p in in_dist]
    )


def test_the_ood_gate_uses_plain_cosine_and_old_states_keep_the_centred_one(
    fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    pfam_records: list[ProteinRecord],
) -> None:
    """Centring removes what transposases share; plain cosine keeps it and gates Pfam better."""
    support, query = is_split
    classifier = fitted["knn"]
    layer = classifier.layer
    vectors = _features(support)[layer]
    plain = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(classifier.support_nn, plain, rtol=1e-6)

    def gated(c: FewShotClassifier, records: list[ProteinRecord]) -> float:
        return float(np.mean(c.nearest_similarity(_features(records)) < c.ood_threshold))

    params, blob = classifier.to_state()
    old = {k: v for k, v in params.items() if k != "ood_centred"}
    centred = FewShotClassifier.fit(
        _features(support), [r.labels for r in support], FewShotConfig(method="knn")
    )
    centred.ood_centred = True
    centred.support_nn = centred._vectors(_features(support))
    sims = centred.support_nn @ centred.support_nn.T
    np.fill_diagonal(sims, -np.inf)
    centred.ood_threshold = float(np.quantile(sims.max(1), 0.02))
    assert gated(classifier, pfam_records) > gated(centred, pfam_records) + 0.2
    assert gated(classifier, query) <= 0.1
    restored = FewShotClassifier.from_state(old, blob)  # a state written before the change
    assert restored.ood_centred
    centred_sims = restored._vectors(_features(query)) @ restored.support_nn.T
    np.testing.assert_array_equal(
        restored.nearest_similarity(_features(query)), centred_sims.max(1)
    )


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
        _features(support), labels, FewShotConfig(method="prototype", ood_quantile=0.0)
    )
    assert [level.depth for level in classifier.levels] == [3, 2, 1]
    predictions = classifier.predict(_features(query))
    statuses = [p.status for p in predictions]
    assert statuses.count("backed_off") >= len(query) // 2, statuses
    assert all(p.labels == ("1.1.1.-",) for p in predictions if p.status == "backed_off")
    metrics = label_metrics([("1.1.1.1",)] * len(query), predictions)
    assert metrics["backoff_precision"] == 1.0
    # a parent probability is the sum over its children
    probs = classifier.predict_proba(_features(query))
    backed = next(i for i, p in enumerate(predictions) if p.status == "backed_off")
    siblings = [classifier.classes.index(c) for c in ("1.1.1.1", "1.1.1.2")]
    assert predictions[backed].probability == pytest.approx(probs[backed, siblings].sum())


def test_flat_labels_never_back_off(fitted: dict[str, FewShotClassifier]) -> None:
    assert fitted["prototype"].levels == []
    with pytest.raises(InvalidInputError, match="dotted labels"):
        FewShotClassifier.fit(
            {1: np.eye(4)}, [("a",), ("b",), ("a",), ("b",)], FewShotConfig(hierarchical="yes")
        )


@pytest.fixture(scope="module")
def phosphatases(shared_file: Callable[..., Path]) -> list[ProteinRecord]:
    """Dual-specificity phosphatases (EC 3.1.3.16;3.1.3.48), their single-label relatives and two
    unrelated enzyme classes, from the CLEAN split."""
    wanted = {"3.1.3.16", "3.1.3.48", "3.6.4.13", "2.7.7.7"}
    out, per_label = [], defaultdict(int)
    for record in read_fasta(shared_file("ec/clean_split10.fasta")):
        if set(record.labels) <= wanted and per_label[record.labels] < 20:
            per_label[record.labels] += 1
            out.append(record)
    return out


def test_multi_label_support_predicts_both_labels(phosphatases: list[ProteinRecord]) -> None:
    dual = ("3.1.3.16", "3.1.3.48")
    assert sum(r.labels == dual for r in phosphatases) == 20
    support, query = phosphatases[::2], phosphatases[1::2]
    classifier = FewShotClassifier.fit(
        _features(support),
        [r.labels for r in support],
        FewShotConfig(method="knn", hierarchical="no", ood_quantile=0.0, target_precision=0.5),
    )
    assert classifier.multi_label_ratio is not None
    predictions = classifier.predict(_features(query), [r.id for r in query])
    assert any(len(p.labels) == 2 for p in predictions)
    assert all(p.labels == (UNKNOWN,) or len(set(p.labels)) == len(p.labels) for p in predictions)
    multi = label_metrics([r.labels for r in query], predictions)
    top_only = [Prediction(**{**p.as_dict(), "labels": p.labels[:1]}) for p in predictions]
    single = label_metrics([r.labels for r in query], top_only)
    assert multi["recall"] > single["recall"]
    assert multi["f1"] >= single["f1"]


def test_fit_rejects_bad_support() -> None:
    x = {1: np.eye(4)}
    with pytest.raises(InvalidInputError, match="at least 2 classes"):
        FewShotClassifier.fit(x, [("a",)] * 4)
    with pytest.raises(InvalidInputError, match="has no label"):
        FewShotClassifier.fit(x, [("a",), ("b",), (), ("a",)])
    with pytest.raises(InvalidInputError, match="reserved"):
        FewShotClassifier.fit(x, [("a",), ("b",), (UNKNOWN,), ("a",)])
    with pytest.raises(InvalidInputError, match="method must be one of"):
        FewShotConfig(method="svm")  # type: ignore[arg-type]


# --- evaluation -----------------------------------------------------------------------------


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


def test_episodes_sample_disjoint_support_and_query(phosphatases: list[ProteinRecord]) -> None:
    labels = [r.labels for r in phosphatases]
    episodes = sample_episodes(labels, episodes=5, ways=3, shots=4, queries=2, seed=3)
    assert len(episodes) == 5
    for episode in episodes:
        assert len(episode.classes) == 3
        assert len(episode.support) == 12 and len(episode.query) == 6
        assert not set(episode.support) & set(episode.query)
        assert {labels[i][0] for i in episode.support} == set(episode.classes)
    assert episodes == sample_episodes(labels, episodes=5, ways=3, shots=4, queries=2, seed=3)
    with pytest.raises(InvalidInputError, match="ways need more"):
        sample_episodes(labels, episodes=1, ways=5, shots=4)


def test_split_evaluation_and_report_write_png_markdown_and_html(
    tmp_path: Path, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    support, query = is_split
    result = evaluate_split(
        _features(support),
        [r.labels for r in support],
        _features(query),
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
    result = evaluate_episodes(_features(phosphatases), labels, episodes, FewShotConfig())
    assert result.metrics["n"] == 4 * 3 * 2 == len(result.predictions)
    assert result.metrics["episodes"] == 4 and len(result.layers) == 4
    assert 0.0 <= result.metrics["episode_top1_mean"] <= 1.0
    assert result.metrics["top1_accuracy"] == pytest.approx(result.metrics["episode_top1_mean"])


# --- the model path -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windowed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer, 32-wide encoder with random weights and a 384-token window (so transposases
    are windowed), saved as a protssl model folder."""
    config = ModelConfig(
        num_layers=3, embed_dim=32, attention_heads=4, ffn_dim=64, max_positions=384
    )
    encoder = ProteinEncoder(config)
    init_weights(encoder, seed=1)
    directory = tmp_path_factory.mktemp("tiny-model")
    save_model(encoder, directory, name="tiny")
    return directory


@pytest.fixture(scope="module")
def windowed_model(windowed_model_dir: Path) -> LoadedModel:
    return load_model(windowed_model_dir, dtype="float32")


def test_embedding_several_layers_matches_one_layer_at_a_time(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    records = sorted(is_split[1], key=len)[-3:] + is_split[1][:3]  # the longest are windowed
    config = EmbedConfig(max_tokens=2048)
    together = {e[1].id: e for e in embed_records_layers(records, windowed_model, (1, -1), config)}
    for layer in (1, 3):
        for single in embed_records(
            records, windowed_model, EmbedConfig(layer=layer, max_tokens=2048)
        ):
            stacked = together[single.id][layer]
            np.testing.assert_allclose(stacked.vector, single.vector, rtol=1e-5, atol=1e-6)
            assert stacked.provenance.layer == layer
            assert stacked.provenance.windowed == single.provenance.windowed
    assert any(e[3].provenance.windowed for e in together.values())


def test_fit_and_classify_records_with_a_model(
    windowed_model: LoadedModel, is_split: tuple[list[ProteinRecord], list[ProteinRecord]]
) -> None:
    support, query = is_split[0][:24], is_split[1][:6]
    classifier = fit_records(support, windowed_model, FewShotConfig(method="knn"))
    assert set(classifier.layer_scores) == {1, 2, 3}
    assert classifier.info["model_sha256"] == windowed_model.sha256
    predictions = classify_records(classifier, query, windowed_model)
    assert [p.id for p in predictions] == [r.id for r in query]
    other = replace(windowed_model, card=replace(windowed_model.card, sha256="0" * 64))
    with pytest.raises(InvalidInputError, match="fitted on model"):
        classify_records(classifier, query, other)


# --- the CLI face ---------------------------------------------------------------------------


def _write_fasta(path: Path, records: list[ProteinRecord]) -> Path:
    path.write_text("".join(f">{r.id} label={';'.join(r.labels)}\n{r.sequence}\n" for r in records))
    return path


def _run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_fewshot_eval_cli_split_episodes_and_report(
    tmp_path: Path,
    windowed_model: LoadedModel,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    support = _write_fasta(tmp_path / "support.fasta", is_split[0][:32])
    query = _write_fasta(tmp_path / "query.fasta", is_split[1][:24])
    model_dir = str(windowed_model_dir)
    code = _run_cli(
        [
            "fewshot-eval",
            "--support",
            str(support),
            "--query",
            str(query),
            "--model",
            model_dir,
            "--method",
            "knn",
            "--dtype",
            "float32",
            "--report",
            str(tmp_path / "report"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(out[-1])
    assert metrics["n"] == 24 and metrics["method"] == "knn"
    assert metrics["model_sha256"] == windowed_model.sha256
    for key in (
        "precision",
        "recall",
        "f1",
        "top1_accuracy",
        "abstention_rate",
        "accuracy_on_answered",
    ):
        assert 0.0 <= metrics[key] <= 1.0
        assert any(line.split() and line.split()[0] == key for line in out[:-1])
    assert (tmp_path / "report" / "index.html").is_file()

    code = _run_cli(
        [
            "fewshot-eval",
            "--support",
            str(support),
            "--episodes",
            "3",
            "--ways",
            "3",
            "--shots",
            "2",
            "--model",
            model_dir,
            "--dtype",
            "float32",
        ]
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and metrics["episodes"] == 3 and metrics["n"] == 3 * 3 * 2

    with pytest.raises(InvalidInputError, match="either --query"):
        _run_cli(["fewshot-eval", "--support", str(support), "--model", model_dir])


def test_abstention_threshold_reaches_the_target_or_maximises_f1() -> None:
    from protssl.fewshot import _threshold

    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    # answering the top two is 100% precise; the third would drop precision to 2/3
    assert _threshold(confidence, np.array([1, 1, 0, 1]), 0.9) == 0.8
    # no cut reaches 0.9: answered-F1 = 2·right/(answered + 4) is best when answering all four
    assert _threshold(confidence, np.array([0, 1, 0, 1]), 0.9) == 0.6


# --- the store: named, versioned classifiers ---------------------------------------------------

_CLI = (
    "import sys\n"
    "from protssl.cli import build_parser\n"
    "args = build_parser().parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


@pytest.mark.slow
def test_classifier_saved_in_the_store_predicts_the_same_in_a_new_process(
    tmp_path: Path,
    store_url: str,
    windowed_model_dir: Path,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    support, query = is_split[0][:24], is_split[1][:12]
    support_file = _write_fasta(tmp_path / "support.fasta", support)
    query_file = _write_fasta(tmp_path / "query.fasta", query)
    common = ["--db", store_url, "--model", str(windowed_model_dir), "--dtype", "float32"]
    assert _run_cli(["classifier", "create", "tfam", "--fasta", str(support_file), "--method",
                     "linear", *common]) == 0  # fmt: skip
    created = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert created["version"] == 1 and created["examples"] == 24
    assert _run_cli(["classify", "tfam", str(query_file), "--format", "json", *common]) == 0
    here = json.loads(capsys.readouterr().out)

    done = subprocess.run(
        [sys.executable, "-c", _CLI, "classify", "tfam", str(query_file), "--format", "json",
         *common],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    there = json.loads(done.stdout)
    assert there == here
    assert [p["id"] for p in there] == [r.id for r in query]

    # adding examples makes version 2; version 1 still loads and predicts as before
    more = _write_fasta(tmp_path / "more.fasta", is_split[0][24:40])
    assert _run_cli(["classifier", "add", "tfam", "--fasta", str(more), *common]) == 0
    added = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert added["version"] == 2 and added["examples"] == 40 and added["method"] == "linear"
    assert _run_cli(["classify", "tfam", str(query_file), "--version", "1", "--format", "json",
                     *common]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == here
    assert _run_cli(["classifier", "show", "tfam", "--db", store_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["layer"] in (1, 2, 3)

    out = tmp_path / "predictions.tsv"
    assert _run_cli(["classify", "tfam", str(query_file), "-o", str(out), *common]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["id", "label", "probability", "status"]
    assert len(rows) == 1 + len(query)


def test_library_save_and_load_keep_examples_and_versions(
    sqlite_url: str, fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:  # fmt: skip
    support, query = is_split
    with Store(StoreConfig(url=sqlite_url)) as store:
        first = save_classifier(store, "is", fitted["prototype"], support)
        second = save_classifier(store, "is", fitted["knn"], support[:10])
        assert (first.version, second.version) == (1, 2)
        old, examples = load_classifier(store, "is", 1)
        new, _ = load_classifier(store, "is")
    assert [r.id for r in examples] == [r.id for r in support]
    assert examples[0].labels == support[0].labels
    assert old.config.method == "prototype" and new.config.method == "knn"
    assert new.info["version"] == 2
    features = _features(query)
    assert old.predict(features) == fitted["prototype"].predict(features)


def test_classifier_cache_loads_a_version_once_and_sees_new_versions_and_reused_names(
    store_url: str, fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:  # fmt: skip
    support, query = is_split
    features = _features(query)
    with Store(StoreConfig(url=store_url)) as store:
        save_classifier(store, "is", fitted["prototype"], support)
        cache = ClassifierCache(store)
        statements: list[str] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        stored, first = cache.get("is")
        assert any("classifier_examples" in s for s in statements)  # the first get loads it all
        statements.clear()
        again_stored, again = cache.get("is")
        assert again is first and again_stored is stored
        assert statements and not [s for s in statements if "blob" in s or "examples" in s]
        assert again.predict(features) == fitted["prototype"].predict(features)

        save_classifier(store, "is", fitted["knn"], support)
        newer_stored, newer = cache.get("is")
        assert newer_stored.version == 2 and newer.config.method == "knn"
        assert cache.get("is", 1)[1] is first

        store.classifiers.delete("is")
        with pytest.raises(ClassifierNotFoundError):
            cache.get("is")
        save_classifier(store, "is", fitted["linear"], support)  # version 1 of the name again
        reused_stored, reused = cache.get("is", 1)
        assert reused.config.method == "linear" and reused is not first
        assert reused_stored.version == 1 and reused_stored.created_at > stored.created_at
        assert reused.predict(features) == fitted["linear"].predict(features)
