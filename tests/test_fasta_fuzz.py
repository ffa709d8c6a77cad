"""Property tests over the FASTA reader: whatever the bytes, records or one `FastaFormatError`.

Arbitrary bytes, unicode, NUL, huge headers, CRLF and missing trailing newlines, plain and gzipped,
under every policy: the reader yields valid records or raises the documented `FastaFormatError`
naming the file (and the record and position where there is one), never anything else; valid
input round-trips. The budget is small by default (CI); `PROTSSL_FUZZ_EXAMPLES=5000` searches longer.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protssl.alphabet import RESIDUES
from protssl.errors import FastaFormatError
from protssl.fasta import FastaPolicy, ProteinRecord, ReadStats, check_fasta, read_fasta

EXAMPLES = int(os.environ.get("PROTSSL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
POLICIES = [
    FastaPolicy(),
    FastaPolicy(on_invalid="skip", on_empty="skip", on_duplicate="skip"),
    FastaPolicy(on_invalid="replace", on_empty="skip", on_duplicate="skip"),
]
_POSITION = re.compile(r"at position (\d+)")

residues = st.text(alphabet=RESIDUES + RESIDUES.lower() + "J", min_size=1, max_size=300)
noise = st.text(alphabet=RESIDUES + "acgt*-. 0129\t\x00\u00e9\u2028\x0b\ufffd", max_size=80)
header = st.one_of(
    st.text(max_size=60),  # any unicode, NUL and control characters included
    st.integers(1, 200_000).map(lambda n: "h" + "x" * n),  # huge headers
    st.builds(
        lambda i, t: f"{i} label={t}", st.text(min_size=1, max_size=10), st.text(max_size=10)
    ),
)
line = st.one_of(
    header.map(lambda h: ">" + h), residues, noise, st.just(""), st.just(">"), st.just("  ")
)


@st.composite
def fasta_like(draw: st.DrawFn) -> bytes:
    """Lines that look like FASTA, mangled: any endings, maybe no final newline, bad bytes."""
    lines = draw(st.lists(line, max_size=30))
    if draw(st.booleans()) and lines:
        lines[0] = ">" + lines[0]
    endings = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines)))
    text = "".join(body + end for body, end in zip(lines, endings, strict=False))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()) and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at:]  # invalid UTF-8 anywhere
    return data


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.fasta"


def _check(path: Path, data: bytes) -> None:
    """Every policy: valid records, or one FastaFormatError that names where; the whole-file check agrees."""
    for policy in POLICIES:
        stats = ReadStats()
        records: list[ProteinRecord] = []
        error = None
        try:
            records.extend(read_fasta(path, policy=policy, stats=stats))
        except FastaFormatError as exc:
            error = exc
            message = str(exc)
            assert message.startswith(str(path)), message
            assert exc.source == str(path)
            if exc.record_id is not None:
                assert f"record {exc.record_id!r}" in message
            if "invalid residue" in message:
                assert policy.on_invalid == "fail" and exc.record_id is not None
                found = _POSITION.search(message)
                assert found and int(found.group(1)) >= 1 and exc.position == int(found.group(1))
        ids = [record.id for record in records]
        assert len(ids) == len(set(ids)), "a duplicate id came through"
        for record in records:
            assert record.id and record.id.strip() == record.id and " " not in record.id
            assert record.sequence and set(record.sequence) <= set(RESIDUES), record
        assert stats.records == len(records)
        assert stats.residues == sum(len(record) for record in records)
        _check_agrees(path, policy, records, error)


def _check_agrees(
    path: Path,
    policy: FastaPolicy,
    records: list[ProteinRecord],
    error: FastaFormatError | None,
) -> None:
    """check_fasta finds what the reader stops at, first: the same error, or the same records."""
    try:
        check = check_fasta(path, policy=policy)
    except FastaFormatError as exc:  # the file itself (not FASTA, bad gzip): no record named
        assert exc.record_index is None and error is not None
        assert str(exc) == str(error) or error.record_index is not None
        return
    found = check.error()
    if error is None:
        assert found is None
        assert (check.records, check.residues) == (len(records), sum(map(len, records)))
    else:
        first = next(iter(check.problems.values()))[0]
        assert found is not None and str(first) == str(error)


@FUZZ
@given(data=st.binary(max_size=4000))
def test_arbitrary_bytes_give_records_or_a_fasta_error(target: Path, data: bytes) -> None:
    target.write_bytes(data)
    _check(target, data)


@FUZZ
@given(data=fasta_like(), gzipped=st.booleans(), cut=st.integers(0, 100))
def test_mangled_fasta_plain_or_gzipped_gives_records_or_a_fasta_error(
    target: Path, data: bytes, gzipped: bool, cut: int
) -> None:
    if gzipped:
        packed = gzip.compress(data)
        data = packed if cut >= 50 else packed[: max(2, len(packed) * cut // 50)]  # truncated
    target.write_bytes(data)
    _check(target, data)


record_id = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=">"),
    min_size=1,
    max_size=40,
).filter(lambda s: s == "".join(s.split()))


@FUZZ
@given(
    records=st.lists(
        st.tuples(record_id, residues, st.text(max_size=40).map(lambda t: " ".join(t.split()))),
        max_size=20,
        unique_by=lambda r: r[0],
    ),
    width=st.integers(1, 120),
    ending=st.sampled_from(["\n", "\r\n"]),
    trailing=st.booleans(),
    gzipped=st.booleans(),
)
def test_valid_records_round_trip(
    target: Path,
    records: list[tuple[str, str, str]],
    width: int,
    ending: str,
    trailing: bool,
    gzipped: bool,
) -> None:
    lines: list[str] = []
    for rid, sequence, description in records:
        lines.append(f">{rid} {description}".rstrip())
        lines.extend(sequence[i : i + width] for i in range(0, len(sequence), width))
    text = ending.join(lines) + (ending if trailing and lines else "")
    data = text.encode()
    target.write_bytes(gzip.compress(data) if gzipped else data)
    got = list(read_fasta(target))
    assert [(r.id, r.sequence, r.description) for r in got] == [
        (rid, sequence.upper().replace("J", "X"), description)
        for rid, sequence, description in records
    ]


def test_what_the_fuzzing_found_ids_end_at_any_whitespace_and_refuse_control_characters(
    target: Path,
) -> None:
    target.write_bytes(b">sp|P1\tsome protein\nMKV\n>0\x1f label=x\nA\n")
    assert [(r.id, r.description) for r in read_fasta(target)] == [
        ("sp|P1", "some protein"),
        ("0", "label=x"),
    ]
    target.write_bytes(b">ok\nMKV\n>a\x00b desc\nMKV\n")
    with pytest.raises(
        FastaFormatError, match=r"\(#2\): the id has a control character '\\x00' at position 2"
    ):
        list(read_fasta(target))
