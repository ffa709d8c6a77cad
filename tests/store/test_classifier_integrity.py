"""What the store refuses and guarantees for classifiers, on SQLite and PostgreSQL alike: no NUL,
no label holding the multi-label separator or a control character, no example without a label,
race-safe creation of a new name, ids never reused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from protssl.errors import AlreadyExistsError, InvalidInputError
from protssl.store import Store, StoreConfig
from protssl.store import engine as engines

MODEL = "cd" * 32


def _save(store: Store, name: str, examples: list, *, new_name: bool = False):
    return store.classifiers.save(
        name,
        model_sha256=MODEL,
        method="prototype",
        params={},
        blob=b"",
        examples=examples,
        metrics={},
        new_name=new_name,
    )


@pytest.mark.parametrize(
    ("name", "record_id", "labels", "words"),
    [
        ("a\x00b", "P1", ("A",), "classifier name contains a NUL"),
        ("ok", "P\x001", ("A",), "id contains a NUL"),
        ("ok", "P1", ("A;B",), "';'"),
        ("ok", "P1", ("",), "must not be empty"),
        ("ok", "P1", (), r"^example 'P1' \(#1\) has no label: give it one or more labels$"),
        ("ok", "P1", ("tab\there",), r"control character '\\t' \(at 4\), which would break"),
        ("ok", "P1", ("new\nline",), r"control character '\\n' \(at 4\)"),
        ("ok", "P1", ("A\x00",), "contains a NUL"),
        ("x" * 201, "P1", ("A",), "the limit is 200"),
        ("ok", "P" * 501, ("A",), "the limit is 500"),
    ],
)
def test_fields_the_store_cannot_hold_are_refused(store, sequences, name, record_id, labels, words):
    with pytest.raises(InvalidInputError, match=words):
        _save(store, name, [(record_id, sequences[0], labels)])
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM classifiers")).scalar_one() == 0


def test_lookups_with_a_nul_are_invalid_input(store):
    for call in (store.classifiers.get, store.classifiers.identity, store.classifiers.delete):
        with pytest.raises(InvalidInputError, match="NUL"):
            call("a\x00b")


def test_concurrent_creates_of_one_name_one_wins(store, sequences):
    examples = [("P1", sequences[0], ("A",))]

    def create(_: int) -> object:
        try:
            return _save(store, "race", examples, new_name=True).version
        except AlreadyExistsError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(create, range(4)))
    assert [o for o in outcomes if isinstance(o, int)] == [1]
    assert sum(isinstance(o, AlreadyExistsError) for o in outcomes) == 3
    assert _save(store, "race", examples).version == 2  # an explicit new version


def test_a_deleted_classifier_id_is_not_handed_out_again(store, sequences):
    first = _save(store, "a", [("P1", sequences[0], ("A",))])
    second = _save(store, "b", [("P1", sequences[0], ("A",))])
    store.classifiers.delete("b")
    third = _save(store, "c", [])
    assert third.id > second.id > first.id


def test_migration_keeps_examples_and_stops_id_reuse(tmp_path: Path, sequences):
    """A SQLite store made by 0001 (ids reused) upgraded in place: examples survive, ids stop."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = engines.create_store_engine(StoreConfig(url=url))
    try:
        engines.upgrade(engine, "0001")
        old = Store(StoreConfig(url=url, migrate=False))
        kept = _save(old, "kept", [("P1", sequences[0], ("A",)), ("P2", sequences[1], ("B",))])
        gone = _save(old, "gone", [])
        old.classifiers.delete("gone")
        assert _save(old, "reused", []).id == gone.id  # what 0001 did
        old.classifiers.delete("reused")
        old.close()
        engines.upgrade(engine)
        with Store(StoreConfig(url=url)) as store:
            assert [e[0] for e in store.classifiers.get("kept").examples] == ["P1", "P2"]
            assert _save(store, "new", []).id > kept.id
            newest = _save(store, "newest", [])
            store.classifiers.delete("newest")
            assert _save(store, "after", []).id > newest.id
    finally:
        engine.dispose()


def test_token_calls_with_a_nul_are_invalid_input(store):
    with pytest.raises(InvalidInputError, match="NUL"):
        store.tokens.revoke("abc\x00")
    with pytest.raises(InvalidInputError, match="NUL"):
        store.tokens.create("read", name="a\x00")
