"""Named, versioned classifiers in the store: save, load, add examples, and a cache of loaded ones.

The store is `protssl.store.Store`, imported for type checking only: importing this module loads no
SQL. A saved version never changes; adding examples refits on the old examples plus the new ones
and saves the next version.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from protssl.checkpoint import LoadedModel
from protssl.embedding import CacheStats, EmbedConfig
from protssl.fasta import ProteinRecord, SequenceItem, as_records
from protssl.fewshot.classifier import FewShotClassifier
from protssl.fewshot.pipeline import Runner, check_model, fit_records, fit_residues

if TYPE_CHECKING:
    from protssl.store import Store, StoredClassifier

__all__ = ["ClassifierCache", "add_examples", "load_classifier", "save_classifier"]

log = logging.getLogger(__name__)


def save_classifier(
    store: Store,
    name: str,
    classifier: FewShotClassifier,
    examples: Sequence[SequenceItem],
    *,
    new_name: bool = False,
) -> StoredClassifier:
    """Save a fitted classifier and its support records (as `fit_records` took them) as the next
    version of `name`.

    Returns the store's `StoredClassifier` (version 1 for a new name). With `new_name`, a name that
    exists is AlreadyExistsError instead (race-safe).
    """
    params, blob = classifier.to_state()
    metrics: dict[str, Any] = dict(classifier.support_metrics)
    metrics["layer_scores"] = {str(k): v for k, v in classifier.layer_scores.items()}
    metrics["layer"] = classifier.layer
    return store.classifiers.save(
        name,
        model_sha256=str(classifier.info.get("model_sha256", "")),
        model_name=classifier.info.get("model_name"),
        method=classifier.config.method,
        params=params,
        blob=blob,
        examples=[(r.id, r.sequence, tuple(r.labels)) for r in as_records(examples)],
        metrics=metrics,
        new_name=new_name,
    )


def load_classifier(
    store: Store, name: str, version: int | None = None
) -> tuple[FewShotClassifier, list[ProteinRecord]]:
    """A stored classifier (latest version unless given) and the support records it was fitted on."""
    stored = store.classifiers.get(name, version)
    return _from_stored(stored), _examples_of(stored)


def _examples_of(stored: StoredClassifier) -> list[ProteinRecord]:
    """The support records a store row was fitted on."""
    return [ProteinRecord(i, s, tuple(labels)) for i, s, labels in stored.examples]


def _from_stored(stored: StoredClassifier) -> FewShotClassifier:
    """The classifier a store row holds, its info naming the row's name and version."""
    classifier = FewShotClassifier.from_state(stored.params, stored.blob)
    classifier.info.update({"name": stored.name, "version": stored.version})
    return classifier


class ClassifierCache:
    """Loaded classifiers by stored identity, for callers that classify again and again.

    A lookup costs one small query (id, version, created_at) instead of the blob, the examples and
    deserialising: a saved version never changes, so a new version, a deletion or a name reused
    after one shows up as another identity. Thread-safe; the least recently used goes first.
    """

    def __init__(self, store: Store, max_entries: int = 32) -> None:
        self.store = store
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[
            tuple[int, int, dt.datetime], tuple[StoredClassifier, FewShotClassifier]
        ]
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, name: str, version: int | None = None
    ) -> tuple[StoredClassifier, FewShotClassifier]:
        """The store's `StoredClassifier` for `name` (latest version unless given) and the model."""
        key = self.store.classifiers.identity(name, version)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        stored = self.store.classifiers.get(name, key[1])
        entry = (stored, _from_stored(stored))
        with self._lock:  # under the identity of the row read, should it differ from `key`
            self._entries[(stored.id, stored.version, stored.created_at)] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry


def add_examples(
    store: Store,
    name: str,
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    *,
    on_batch: Callable[[int], None] | None = None,
    on_total: Callable[[int, int], None] | None = None,
    stats: CacheStats | None = None,
    run: Runner | None = None,
) -> StoredClassifier:
    """Refit `name` on its latest examples plus `records` (same config) and save the next version.

    A record whose id is already among the examples replaces it (a warning names those whose
    sequence or labels differ); when every record is among them as it is, nothing is refitted and
    the latest version is returned, with a warning. Vectors go through the store's embedding cache,
    so the old examples are not embedded again; `stats` counts what was computed. `on_batch`,
    `run`: as `fit_records` takes them, over all the examples; `on_total` is first told what
    `on_batch` will add up to (`fit_residues`) and how many residues of it are embedding.
    """
    stored = store.classifiers.get(name)
    latest, examples = _from_stored(stored), _examples_of(stored)
    check_model(latest, model)
    kept = {r.id: (r.sequence, r.labels) for r in examples}
    changed = [r.id for r in records if r.id in kept and kept[r.id] != (r.sequence, r.labels)]
    if records and all(kept.get(r.id) == (r.sequence, r.labels) for r in records):
        log.warning(
            "classifier %r: each of the %d example(s) is in version %s as it is: no version added",
            name,
            len(records),
            stored.version,
        )
        return stored
    if changed:
        shown = ", ".join(repr(i) for i in changed[:3]) + (" ..." if len(changed) > 3 else "")
        log.warning(
            "classifier %r: %d example(s) replace ones of the same id with another sequence or "
            "labels: %s",
            name,
            len(changed),
            shown,
        )
    new_ids = {r.id for r in records}
    merged = [r for r in examples if r.id not in new_ids] + list(records)
    if on_total is not None:
        on_total(fit_residues(merged, latest.config), sum(len(r.sequence) for r in merged))
    classifier = fit_records(
        merged,
        model,
        latest.config,
        embed_config=EmbedConfig(pooling=latest.info.get("pooling", "mean")),
        on_batch=on_batch,
        cache=store.embeddings,
        stats=stats,
        run=run,
    )
    return save_classifier(store, name, classifier, merged)
