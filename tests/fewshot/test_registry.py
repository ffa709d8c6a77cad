"""Named, versioned classifiers in the store: save, load, add examples, the cache of loaded ones."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event

from protssl.checkpoint import LoadedModel
from protssl.errors import CheckpointError, ClassifierNotFoundError
from protssl.fasta import ProteinRecord
from protssl.fewshot import (
    ClassifierCache,
    FewShotClassifier,
    FewShotConfig,
    add_examples,
    classify_records,
    fit_records,
    load_classifier,
    save_classifier,
)
from protssl.store import Store, StoreConfig

from .support import two_layers


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
    features = two_layers(query)
    assert old.predict(features) == fitted["prototype"].predict(features)


def test_classifier_cache_loads_a_version_once_and_sees_new_versions_and_reused_names(
    store_url: str, fitted: dict[str, FewShotClassifier],
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> None:  # fmt: skip
    support, query = is_split
    features = two_layers(query)
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


def test_add_examples_refits_old_and_new_examples_as_the_next_version(
    sqlite_url: str,
    windowed_model: LoadedModel,
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version 2 holds the old examples and the new, a same-id one replacing its old one (with a
    warning naming it); adding examples it holds as they are adds no version."""
    support = is_split[0]
    first, more = support[:16], support[16:24]
    relabelled = replace(first[0], labels=first[-1].labels)  # same id: replaces the old example
    config = FewShotConfig(method="knn", k=3)
    with Store(StoreConfig(url=sqlite_url)) as store:
        save_classifier(store, "is", fit_records(first, windowed_model, config), first)
        # no vector was cached (no cache given): the save named the model
        named = [(windowed_model.sha256, windowed_model.name)]
        assert store.embeddings.models_named(windowed_model.name) == named
        with caplog.at_level("WARNING", logger="protssl.fewshot.registry"):
            stored = add_examples(store, "is", [relabelled, *more], windowed_model)
            assert (
                f"classifier 'is': 1 example(s) replace ones of the same id with another sequence "
                f"or labels: {relabelled.id!r}"
            ) in caplog.text
            caplog.clear()
            again = add_examples(store, "is", more, windowed_model)  # all there as they are
            assert again.version == 2 and store.classifiers.get("is").version == 2
            assert "each of the 8 example(s) is in version 2 as it is: no version added" in (
                caplog.text
            )
        latest, examples = load_classifier(store, "is")
        other = replace(windowed_model, card=replace(windowed_model.card, sha256="0" * 64))
        with pytest.raises(CheckpointError, match="classifier 'is' v2 was fitted on model"):
            add_examples(store, "is", more, other)
        assert store.classifiers.get("is").version == 2
    assert stored.version == 2
    assert [r.id for r in examples] == [r.id for r in first[1:]] + [relabelled.id] + [
        r.id for r in more
    ]
    assert examples[len(first) - 1].labels == first[-1].labels
    assert latest.config == config
    query = is_split[1][:6]
    from_scratch = fit_records(examples, windowed_model, config)
    assert classify_records(latest, query, windowed_model) == classify_records(
        from_scratch, query, windowed_model
    )
