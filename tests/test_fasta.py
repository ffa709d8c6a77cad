from __future__ import annotations

import gzip
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from protssl.errors import FastaFormatError, InvalidInputError
from protssl.fasta import (
    UTF8_BOM,
    FastaPolicy,
    ReadStats,
    check_fasta,
    looks_nucleotide,
    normalize_sequence,
    read_fasta,
    read_fasta_range,
    records_from_sequences,
    validate_fasta,
)


def test_reads_real_corpus_sample(sample_fasta: Path, sample_size: int) -> None:
    stats = ReadStats()
    records = list(read_fasta(sample_fasta, stats=stats))
    assert len(records) == sample_size
    assert stats.records == sample_size
    assert stats.residues == sum(len(r) for r in records)
    assert all(r.sequence.isupper() for r in records)


def test_gzip_gives_same_records(sample_fasta: Path, tmp_path: Path) -> None:
    gz = tmp_path / "sample.fa.gz"
    gz.write_bytes(gzip.compress(sample_fasta.read_bytes()))
    assert list(read_fasta(gz)) == list(read_fasta(sample_fasta))


def test_a_utf8_byte_order_mark_is_skipped_plain_or_gzipped(
    sample_fasta: Path, tmp_path: Path
) -> None:
    """What Notepad and Excel exports put first; it once made the file "not FASTA"."""
    first = "".join(">" + c for c in sample_fasta.read_text().split(">")[1:4])
    plain, marked, packed = tmp_path / "p.fasta", tmp_path / "bom.fasta", tmp_path / "bom.fa.gz"
    plain.write_text(first)
    marked.write_bytes(UTF8_BOM + first.encode())
    packed.write_bytes(gzip.compress(marked.read_bytes()))
    want = list(read_fasta(plain))
    assert len(want) == 3
    assert list(read_fasta(marked)) == want
    assert list(read_fasta(packed)) == want
    assert check_fasta(marked) == check_fasta(packed) == check_fasta(plain)
    assert list(read_fasta_range(marked, 0, marked.stat().st_size)) == want


def test_check_finds_every_bad_record_and_counts_what_the_policy_keeps(
    edge_cases: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    """Real files: the sample, then 50 internal stops, an alignment with gaps, an empty record and a
    repeated id after it; grouped by problem, the first three of each named, in file order."""
    mixed = tmp_path / "mixed.fasta"
    parts = ["prokka_IS_internal_stops.fasta", "emboss_protgap.fasta"]
    sample = sample_fasta.read_text()
    first_id = sample[1:].split(None, 1)[0]
    tail = ">empty\n>" + first_id + " again\nMKV\n"
    mixed.write_text(sample + "".join((edge_cases / p).read_text() for p in parts) + tail)
    kept = list(read_fasta(mixed, policy=FastaPolicy("skip", "skip", "skip")))
    check = check_fasta(mixed)
    stops = list(read_fasta(edge_cases / parts[0], policy=FastaPolicy("replace")))
    assert check.headers == len(kept) + len(stops) + 3
    assert (check.records, check.residues) == (len(kept), sum(len(r) for r in kept))
    assert check.counts == {
        "invalid residue '*' (an internal stop codon)": len(stops),
        "invalid residue '.' (an alignment gap)": 1,
        "empty record (no residues)": 1,
        "duplicate id (seen earlier in this input)": 1,
    }
    named = check.problems["invalid residue '*' (an internal stop codon)"]
    assert [p.record_id for p in named] == [r.id for r in stops[:3]]
    error = check.error()
    assert error is not None and "\n" not in str(error)
    assert str(error).startswith(f"{mixed}: {len(stops) + 3} records break the FASTA policy: ")
    assert f"record {stops[0].id!r} (#{len(kept) + 1}) at position" in str(error)
    assert f"and {len(stops) - 3} more" in str(error)
    assert f"record {first_id!r} (#{check.headers})" in str(error)
    for hint in ("on_invalid skip or replace", "on_empty skip", "on_duplicate skip"):
        assert str(error).count(hint) == 1
    with pytest.raises(FastaFormatError) as raised:
        validate_fasta(mixed)
    assert str(raised.value) == str(error)
    lenient = validate_fasta(mixed, policy=FastaPolicy("replace", "skip", "skip"))
    assert lenient is not None and lenient.records == len(kept) + len(stops) + 1


def test_one_bad_record_is_its_own_error_and_a_clean_file_none(
    edge_cases: Path, sample_fasta: Path
) -> None:
    gaps = edge_cases / "emboss_protgap.fasta"
    with pytest.raises(FastaFormatError) as raised:
        list(read_fasta(gaps))
    error = check_fasta(gaps).error()
    assert error is not None and str(error) == str(raised.value)
    assert error.position == raised.value.position
    assert check_fasta(sample_fasta).error() is None
    assert validate_fasta("-") is None  # stdin is read once, as it comes


def test_gaps_strip_reads_an_alignment_as_its_unaligned_sequences(
    shared_file: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real Pfam seed alignment written as aligned FASTA: with gaps strip, the sequences are those
    of pfam_seed_small.fasta (made from it by removing gaps and uppercasing)."""
    from Bio import AlignIO

    aligned = tmp_path / "fn3.afa"
    AlignIO.convert(shared_file("stockholm/fn3.sto"), "stockholm", aligned, "fasta")
    with pytest.raises(
        FastaFormatError, match=r"an alignment gap\); an aligned sequence\? gaps strip"
    ):
        list(read_fasta(aligned))
    stripped = {r.id: r.sequence for r in read_fasta(aligned, policy=FastaPolicy(gaps="strip"))}
    seeds = read_fasta(shared_file("families/pfam_seed_small.fasta"))
    expected = {r.id: r.sequence for r in seeds if r.labels == ("fn3",)}
    assert len(stripped) > 50 and stripped == expected
    with caplog.at_level("WARNING", logger="protssl.fasta"):
        replaced = validate_fasta(aligned, policy=FastaPolicy(on_invalid="replace"))
        assert replaced is not None and replaced.gapped_replaced == len(expected)
        assert (
            f"{len(expected)} record(s) with alignment gaps, which on_invalid replace makes X"
            in (caplog.text)
        )
        caplog.clear()
        validate_fasta(aligned, policy=FastaPolicy(on_invalid="replace", gaps="strip"))
        assert caplog.text == ""
    stops = ">a\nMK-V*\n>b\nMK*V\n"
    both = tmp_path / "both.fasta"
    both.write_text(stops)
    error = check_fasta(both, policy=FastaPolicy(gaps="strip")).error()
    assert error is not None and "record 'b' (#2) at position 3: invalid residue '*'" in str(error)
    with pytest.raises(InvalidInputError, match="gaps must be invalid or strip"):
        FastaPolicy(gaps="keep")  # type: ignore[arg-type]


def test_dna_read_as_protein_is_named_in_a_warning(
    shared_file: Callable[..., Path], sample_fasta: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of DNA and protein mixed (EMBOSS's testseqs): the 9 nucleotide records of 20+
    residues are counted and the first named; no real protein in the corpus sample is."""
    mixed = shared_file("edge_cases/emboss_testseqs.ncbi")
    policy = FastaPolicy(on_duplicate="skip", on_invalid="skip")
    with caplog.at_level("WARNING", logger="protssl.fasta"):
        check = validate_fasta(mixed, policy=policy)
    assert check is not None and (check.nucleotide_like, check.records) == (9, 25)
    assert check.nucleotide_ids == (
        "gi|14406|emb|A00021.1|A00021",
        "lcl|JK5",
        "gi|39394|emb|X66730.1|BBPLAS",
    )
    assert "9 of 25 record(s) look like DNA or RNA, not protein" in caplog.text
    assert "'lcl|JK5'" in caplog.text and "translate them first" in caplog.text
    assert check_fasta(sample_fasta).nucleotide_like == 0
    assert not looks_nucleotide("GAGAGAGAGAGA")  # a short peptide, not flagged
    assert looks_nucleotide("ACGTTGCA" * 4) and looks_nucleotide("ACGUUGCAN" * 3)


@pytest.mark.parametrize(
    ("first_line", "looks_like"),
    [
        ("# STOCKHOLM 1.0", "a Stockholm alignment: convert it to FASTA"),
        ("CLUSTAL W (1.83) multiple sequence alignment", "a Clustal alignment"),
        ("LOCUS       NC_000913  4641652 bp    DNA", "a GenBank file"),
        ("ID   001R_FRG3G   Reviewed;   256 AA.", "an EMBL or UniProt text entry"),
        ("@read1", "FASTQ"),
        ("<!DOCTYPE html>", "HTML or XML"),
        ('{"results": []}', "JSON"),
        ("MKVLAAGIVGALLAQ", "a bare sequence: put a header line (>ID) above it"),
    ],
)
def test_a_file_that_is_not_fasta_says_what_it_looks_like(
    tmp_path: Path, first_line: str, looks_like: str
) -> None:
    path = tmp_path / "input.txt"
    path.write_text(first_line + "\nmore\n")
    expected = rf"^{path}: this is not FASTA: .* '>'; it looks like {re.escape(looks_like)}"
    with pytest.raises(FastaFormatError, match=expected):
        list(read_fasta(path))


def test_utf16_text_is_one_line_saying_to_convert_it(tmp_path: Path) -> None:
    path = tmp_path / "u16.fasta"
    path.write_text(">a\nMKV\n", encoding="utf-16")  # with its byte order mark
    with pytest.raises(FastaFormatError, match=r"u16.fasta: UTF-16 text .* iconv -f UTF-16"):
        list(read_fasta(path))


def test_a_file_that_cannot_be_opened_is_one_error_naming_it(tmp_path: Path) -> None:
    """Another user's file gives EACCES; a socket, which even root cannot open, gives ENXIO: the
    same branch."""
    path = tmp_path / "not-a-file.fasta"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        with pytest.raises(InvalidInputError) as refused:
            list(read_fasta(path))
    assert str(refused.value) == f"{path}: cannot read it (No such device or address)"
    with pytest.raises(InvalidInputError, match=r"is a folder, not a FASTA file"):
        list(read_fasta(tmp_path))
    with pytest.raises(InvalidInputError, match=r"missing.fasta: no such file"):
        list(read_fasta(tmp_path / "missing.fasta"))


def test_labels_from_header(tmp_path: Path) -> None:
    path = tmp_path / "l.fasta"
    path.write_text(">P1 some protein label=1.1.1.1;2.7.11.1\nmkv*\n")
    (record,) = read_fasta(path)
    assert record.labels == ("1.1.1.1", "2.7.11.1")
    assert record.sequence == "MKV"
    path.write_text(  # quoted, as Prokka-style key="value" headers write them
        '>a label="IS5" product="x y"\nMKV\n>b label="IS200 family;IS3" x\nMKV\n'
        ">c label='two words'\nMKV\n"
    )
    assert [r.labels for r in read_fasta(path)] == [
        ("IS5",),  # was '"IS5"', quotes and all
        ("IS200 family", "IS3"),  # was '"IS200'
        ("two words",),
    ]


def test_policy_rules() -> None:
    assert normalize_sequence("acdJ*") == ("ACDX", 0)
    assert normalize_sequence("UOBZX") == ("UOBZX", 0)
    with pytest.raises(InvalidInputError, match=r"position 3"):
        normalize_sequence("MK-V", record_id="r1")
    assert normalize_sequence("MK-V", on_invalid="replace") == ("MKXV", 1)


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        ("MKÄL", 3),
        ("MKV1", 4),
        ("\u00b5K", 1),
        ("MK V?", 4),
        ("ACDEFGHIKLMNPQRSTVWY" * 40 + "#", 801),
        ("mkıaa", 3),  # str.upper() makes it I, a residue
        ("MKßAA", 3),  # and this SS, moving what follows
        ("MKéAA", 3),
    ],
)
def test_invalid_characters_are_found_and_placed(raw: str, position: int) -> None:
    """Non-ASCII letters, digits and symbols anywhere fail with their position (after whitespace
    is dropped), named as sent, are dropped by skip, and become X with replace."""
    sent = "".join(raw.split())[position - 1]
    with pytest.raises(InvalidInputError, match=rf"position {position}: invalid residue '{sent}'"):
        normalize_sequence(raw, record_id="r1")
    assert normalize_sequence(raw, on_invalid="skip") == (None, 0)
    replaced, count = normalize_sequence(raw, on_invalid="replace")
    assert count == 1 and replaced is not None and replaced[position - 1] == "X"


def test_a_file_with_a_letter_upper_casing_would_turn_into_residues_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dotless.fasta"
    path.write_text(">a\nmktaıak\n>b\nmkta\n", encoding="utf-8")
    with pytest.raises(
        FastaFormatError, match=r"record 'a' \(#1\) at position 5: invalid residue 'ı'"
    ):
        list(read_fasta(path))
    kept = list(read_fasta(path, policy=FastaPolicy(on_invalid="replace")))
    assert [r.sequence for r in kept] == ["MKTAXAK", "MKTA"]


def test_internal_stop_names_record_and_position(edge_cases: Path) -> None:
    path = edge_cases / "prokka_IS_internal_stops.fasta"
    with pytest.raises(InvalidInputError) as info:
        list(read_fasta(path))
    message = str(info.value)
    assert path.name in message and "position" in message
    stats = ReadStats()
    kept = list(read_fasta(path, policy=FastaPolicy(on_invalid="skip"), stats=stats))
    assert stats.skipped_invalid > 0 and len(kept) == stats.records


def test_every_edge_case_gives_records_or_one_line_error(edge_cases: Path) -> None:
    for path in sorted(edge_cases.iterdir()):
        try:
            records = list(read_fasta(path))
        except InvalidInputError as exc:
            assert "\n" not in str(exc) and path.name in str(exc)
        else:
            assert records, path


def test_examples_are_the_shared_records_they_stand_in_for(
    shared_file: Callable[..., Path],
) -> None:
    """What examples/README.md says: proteins.fasta is the corpus sample's first 300 records byte
    for byte (headers with src=), the labelled files are shared transposases with their family,
    and each edge_cases/ file is a copy or prefix of the shared one."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    why = "the copies in examples/ are checked against it"
    shipped = (examples / "proteins.fasta").read_bytes()
    sample = shared_file("pretrain/pretrain_corpus_sample2k.fasta", why)
    assert sample.read_bytes().startswith(shipped)
    headers = [line for line in shipped.decode().splitlines() if line.startswith(">")]
    assert len(headers) == 300 and all(" src=" in line for line in headers)
    families = shared_file("families/prokka_IS_transposase_families.fasta", why)
    by_id = {r.id: r for r in read_fasta(families, policy=FastaPolicy(on_invalid="skip"))}
    for name in ("labelled.fasta", "labelled_query.fasta"):
        for record in read_fasta(examples / name):
            shared = by_id[record.id]
            assert (record.sequence, record.labels) == (shared.sequence, shared.labels), record.id
    for path in sorted((examples / "edge_cases").iterdir()):
        full = shared_file(f"edge_cases/{path.name}", why).read_bytes()
        assert full.startswith(path.read_bytes()) and path.read_bytes().endswith(b"\n"), path.name


def test_biopython_records_are_taken_as_protssl_records(sample_fasta: Path) -> None:
    """`SeqIO.parse` gives what a FASTA file read by protssl gives: ids, residues (through the
    same policy: lowercase uppercased, a stop refused by name), labels from `label=`."""
    ours = list(read_fasta(sample_fasta))[:5]
    with sample_fasta.open() as handle:  # given a path, SeqIO.parse leaves the file open
        theirs = list(SeqIO.parse(handle, "fasta"))[:5]
    assert records_from_sequences(theirs) == records_from_sequences(ours)
    labelled = SeqRecord(Seq("mkvl"), id="q1", description="q1 label=1.1.1.1;2.7.1.1 len=4")
    (record,) = records_from_sequences([labelled])
    assert (record.id, record.sequence, record.labels) == ("q1", "MKVL", ("1.1.1.1", "2.7.1.1"))
    with pytest.raises(
        FastaFormatError, match=r"record 'q2' \(#2\) at position 3: invalid residue"
    ):
        records_from_sequences([labelled, SeqRecord(Seq("MK*V"), id="q2")])
    with pytest.raises(InvalidInputError, match=r"sequences\[1\]: SeqRecord 'q3' has no residues"):
        records_from_sequences([labelled, SeqRecord(Seq(None, 40), id="q3")])
    with pytest.raises(InvalidInputError, match=r"not a sequence .* or a Biopython SeqRecord"):
        records_from_sequences([labelled, Seq("MKV")])


def test_in_memory_sequences_that_break_the_policy_are_named_together() -> None:
    """What `protssl.embed` and every gRPC request go through: all the bad ones, not the first."""
    sequences = ["MKV", "MK-V", "", "MKXV", "M1KV", "MK.V"]
    with pytest.raises(FastaFormatError) as raised:
        records_from_sequences(sequences, source="request")
    message = str(raised.value)
    assert message.startswith("request: 4 records break the FASTA policy: ")
    assert "1 x invalid residue '-' (an alignment gap): record 'seq1' (#2) at position 3" in message
    assert "1 x invalid residue '.' (an alignment gap): record 'seq5' (#6) at position 3" in message
    assert "1 x empty record (no residues): record 'seq2' (#3)" in message
    assert "1 x invalid residue '1' (a digit): record 'seq4' (#5) at position 2" in message
    with pytest.raises(FastaFormatError) as one:
        records_from_sequences(["MKV", "MK*V"], source="request")
    assert str(one.value).startswith("request: record 'seq1' (#2) at position 3: invalid residue")
    kept = records_from_sequences(sequences, policy=FastaPolicy("skip", on_empty="skip"))
    assert [r.sequence for r in kept] == ["MKV", "MKXV"]


def test_an_id_too_long_for_an_output_is_refused_in_memory_too() -> None:
    """protssl.embed's and the SDK's records: the same check as a file's, before any work."""
    with pytest.raises(FastaFormatError) as refused:
        records_from_sequences({"ok": "MKT", "x" * 16_385: "MKT"})
    assert str(refused.value) == (
        f"<input>: record {'x' * 40 + '…'!r} (#2): the id is 16,385 bytes long; ids up to "
        "16,384 bytes (UTF-8) fit every output format"
    )
    assert [r.id for r in records_from_sequences({"x" * 16_384: "MKT"})] == ["x" * 16_384]
