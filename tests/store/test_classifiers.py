"""Named, versioned classifiers in the store: versions, JSON checks, deletion, concurrent saves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import text

from protssl.errors import ClassifierNotFoundError, InvalidInputError
from protssl.store import Store

MODEL = "ab" * 32


def test_classifier_versions(store: Store, sequences: list[str]) -> None:
    examples = [("P1", sequences[0], ("1.1.1.1",)), ("P2", sequences[1], ("2.7.11.1", "3.1.3.16"))]
    first = store.classifiers.save(
        "ec",
        model_sha256=MODEL,
        method="knn",
        params={"k": 3},
        blob=b"\x00v1",
        examples=examples,
        metrics={"accuracy": 0.5},
    )
    second = store.classifiers.save(
        "ec",
        model_sha256=MODEL,
        method="logistic",
        params={"c": 1.0},
        blob=b"\x00v2",
        examples=examples[::-1],
        metrics={"accuracy": np.float32(0.75), "per_class": np.array([0.5, 1.0])},
    )
    store.classifiers.save(
        "amr", model_sha256=MODEL, method="prototype", params={}, blob=b"", examples=[], metrics={}
    )
    assert (first.version, second.version) == (1, 2)
    assert second.metrics == {"accuracy": 0.75, "per_class": [0.5, 1.0]}
    with pytest.raises(InvalidInputError, match="params must be JSON"):
        store.classifiers.save(
            "ec",
            model_sha256=MODEL,
            method="knn",
            params={"f": len},
            blob=b"",
            examples=[],
            metrics={},
        )
    latest = store.classifiers.get("ec")
    assert latest == second
    old = store.classifiers.get("ec", 1)
    assert old.blob == b"\x00v1"
    assert old.examples == tuple(examples)
    assert old.params == {"k": 3}
    assert [(c.name, c.version) for c in store.classifiers.list()] == [("amr", 1), ("ec", 2)]
    store.classifiers.delete("ec")
    with pytest.raises(ClassifierNotFoundError, match="'ec'"):
        store.classifiers.get("ec", 1)
    with pytest.raises(ClassifierNotFoundError):
        store.classifiers.delete("ec")
    assert [c.name for c in store.classifiers.list()] == ["amr"]
    with store.engine.connect() as connection:  # the examples went with their versions
        assert connection.execute(text("SELECT count(*) FROM classifier_examples")).scalar() == 0


def test_a_classifier_names_its_model(store: Store, sequences: list[str]) -> None:
    """A classifier saved before any vector of its model was cached still gives the model its name."""
    for model_name in (None, "tiny-test"):
        store.classifiers.save(
            "ec",
            model_sha256=MODEL,
            model_name=model_name,
            method="knn",
            params={},
            blob=b"",
            examples=[("P1", sequences[0], ("1.1.1.1",))],
            metrics={},
        )
    assert store.embeddings.models_named("tiny-test") == [(MODEL, "tiny-test")]


def test_concurrent_saves_of_one_name_get_distinct_versions(store: Store) -> None:
    """Two threads racing on one name: each version number is taken once (PostgreSQL retries)."""

    def save_four(tag: str) -> list[int]:
        return [
            store.classifiers.save(
                "race", model_sha256=MODEL, method=tag, params={}, blob=b"", examples=[], metrics={}
            ).version
            for _ in range(4)
        ]

    with ThreadPoolExecutor(max_workers=2) as pool:
        versions = [v for result in pool.map(save_four, ["a", "b"]) for v in result]
    assert sorted(versions) == list(range(1, 9))
    assert store.classifiers.get("race").version == 8
