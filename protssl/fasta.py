"""FASTA → `ProteinRecord`: a streaming reader on Biopython `SeqIO` with an explicit residue policy.

Policy (the same for the CLI, the SDK and the service):

- letters are uppercased (masked lowercase stretches become ordinary residues);
- one terminal `*` (a translated stop codon) is stripped;
- the 20 standard residues and U, O, B, Z, X are kept (the ESM alphabet has them); J becomes X;
- anything else — gaps `-` `.`, an internal `*`, digits, other symbols — is invalid:
  `fail` (default) raises `FastaFormatError` naming the file, record and 1-based position,
  `skip` drops the record and counts it, `replace` turns each invalid character into X;
- an empty record and a repeated id are errors naming them, or skipped and counted;
- the id is the header up to the first whitespace (space, tab...); an id with a control
  character (NUL...) is an error naming the record's number and the position.

Headers of the form `>ID label=A;B other=...` give `ProteinRecord.labels == ("A", "B")`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import os
import re
import string
import sys
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

from Bio.Seq import UndefinedSequenceError
from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqRecord import SeqRecord

from protssl.alphabet import RESIDUES, first_non_residue
from protssl.errors import FastaFormatError, InvalidInputError
from protssl.progress import progress_bar

__all__ = [
    "MAX_ID_BYTES",
    "UTF8_BOM",
    "FastaCheck",
    "FastaPolicy",
    "ProteinRecord",
    "ReadStats",
    "SequenceItem",
    "as_records",
    "check_fasta",
    "checked_id",
    "checked_item",
    "long_id_problem",
    "looks_nucleotide",
    "no_records_error",
    "normalize_sequence",
    "open_fasta_bytes",
    "parse_labels",
    "read_fasta",
    "read_fasta_range",
    "records_from_sequences",
    "refuse_misshapen",
    "refuse_one_string",
    "settable_advice",
    "shortened_id",
    "skipped_note",
    "source_name",
    "validate_fasta",
]

log = logging.getLogger(__name__)

OnInvalid = Literal["fail", "skip", "replace"]
OnProblem = Literal["fail", "skip"]
Gaps = Literal["invalid", "strip"]

UTF8_BOM = codecs.BOM_UTF8
"""What Windows editors write first in a UTF-8 file; readers skip it."""
_INVALID = re.compile(f"[^{RESIDUES}]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LABEL = re.compile(r"""(?:^|\s)label=(?:"([^"]*)"|'([^']*)'|(\S+))""")
"""`label=A;B`, or quoted to hold spaces: `label="IS200 family"` (the quotes are not the label's)."""
_GAP_CHARACTERS = "-."
MAX_ID_BYTES = 16_384
"""The longest record id (UTF-8 bytes) protssl takes: every output format is written through .npz
chunks, whose entry names hold 65,535 bytes, and escaping an id (`output.dataset_name`) can triple
it. Checked with the FASTA policy, so such an id is refused before any model work."""
_NO_GAPS = str.maketrans("", "", _GAP_CHARACTERS)
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
"""Only a-z: str.upper() turns some other letters into residues ('ı' into I, 'ß' into SS)."""
_GAP_HINT = (
    "an aligned sequence? gaps strip removes the gaps (the sequence as it was before the "
    "alignment); on_invalid skip drops the record"
)
_POLICY_ADVICE = re.compile(
    r"\b(on_invalid|gaps|on_empty|on_duplicate) (?:fail|skip|replace|strip)\b"
)
"""Advice in a FastaFormatError's hint (`on_invalid skip`): the FastaPolicy field it sets."""
_MEANING = {
    "*": "an internal stop codon",
    "-": "an alignment gap",
    ".": "an alignment gap",
}


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: its id, normalised residues, and labels from `label=` in the header."""

    id: str
    sequence: str
    labels: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple):  # one label given as a string is that label
            labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels)
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.sequence)


SequenceItem = str | ProteinRecord | SeqRecord
"""What a list of sequences may hold: residues, protssl's records, or Biopython's (`SeqIO.parse`)."""


@dataclass(frozen=True)
class FastaPolicy:
    """What to do with records that break the residue policy."""

    on_invalid: OnInvalid = "fail"
    """Invalid characters: raise, skip the record, or replace each with X."""
    on_empty: OnProblem = "fail"
    """A header with no residues: raise or skip."""
    on_duplicate: OnProblem = "fail"
    """An id seen before in the same input: raise or skip the later record."""
    gaps: Gaps = "invalid"
    """Alignment gaps (`-`, `.`): invalid characters like any other, or removed first (aligned
    FASTA, A2M: what is left, uppercased, is the unaligned sequence)."""

    def __post_init__(self) -> None:
        if self.on_invalid not in ("fail", "skip", "replace"):
            raise InvalidInputError(
                f"on_invalid must be fail, skip or replace, not {self.on_invalid!r}"
            )
        if self.gaps not in ("invalid", "strip"):
            raise InvalidInputError(f"gaps must be invalid or strip, not {self.gaps!r}")
        for name in ("on_empty", "on_duplicate"):
            if getattr(self, name) not in ("fail", "skip"):
                raise InvalidInputError(f"{name} must be fail or skip, not {getattr(self, name)!r}")


@dataclass
class ReadStats:
    """Counts a reader fills in as it goes, for the job summary."""

    records: int = 0
    residues: int = 0
    skipped_invalid: int = 0
    skipped_empty: int = 0
    skipped_duplicate: int = 0
    replaced_residues: int = 0
    gapped_replaced: int = 0
    """Records whose alignment gaps `replace` made X (what `gaps strip` would have removed)."""
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.skipped_invalid + self.skipped_empty + self.skipped_duplicate

    def skipped_by(self) -> dict[str, int]:
        """Records left out, per policy setting that left them out (`on_invalid skip`: 50)."""
        counts = {
            "on_invalid skip": self.skipped_invalid,
            "on_empty skip": self.skipped_empty,
            "on_duplicate skip": self.skipped_duplicate,
        }
        return {setting: n for setting, n in counts.items() if n}


@dataclass(frozen=True)
class FastaCheck:
    """What one pass over a FASTA file found (`check_fasta`): the records a policy keeps, and
    the records that break it, grouped by problem."""

    headers: int
    """Records in the file, before the policy drops any."""
    records: int
    """Records the policy keeps."""
    residues: int
    """Residues in those records."""
    problems: dict[str, list[FastaFormatError]] = field(default_factory=dict)
    """Per problem (duplicate id, invalid residue '-'...), the first few records with it, in file order."""
    counts: dict[str, int] = field(default_factory=dict)
    """Per problem, all the records with it."""
    gapped_replaced: int = 0
    """Records whose alignment gaps `on_invalid replace` makes X (`gaps strip` would remove them)."""
    nucleotide_ids: tuple[str, ...] = ()
    """Records that look like DNA or RNA, not protein (`looks_nucleotide`): the first few ids."""
    nucleotide_like: int = 0
    """How many records look like DNA or RNA."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Records the policy left out, per setting that did (`ReadStats.skipped_by`)."""

    def note(self, problem: FastaFormatError, *, named: int = 3) -> None:
        """Count a record that breaks the policy, and keep it when fewer than `named` of its kind are."""
        self.counts[problem.message] = self.counts.get(problem.message, 0) + 1
        kept = self.problems.setdefault(problem.message, [])
        if len(kept) < named:
            kept.append(problem)

    def error(self) -> FastaFormatError | None:
        """One error for them all (the first alone when it is the only one); None when the file passes."""
        total = sum(self.counts.values())
        if total == 0:
            return None
        first = next(iter(self.problems.values()))[0]
        if total == 1:
            return first
        groups = []
        for message, named in self.problems.items():
            items = ", ".join(p.where.removeprefix(f"{p.source}: ") for p in named)
            unnamed = self.counts[message] - len(named)
            more = f" and {unnamed} more" if unnamed else ""
            groups.append(f"{self.counts[message]} x {message}: {items}{more}")
        hints = dict.fromkeys(named[0].hint for named in self.problems.values() if named[0].hint)
        return FastaFormatError(
            f"{total} records break the FASTA policy: " + "; ".join(groups),
            hint="; ".join(hints) or None,
            source=first.source,
        )


def settable_advice(error: FastaFormatError, settable: Collection[str]) -> FastaFormatError:
    """`error` with only the advice a caller who can set the policy fields `settable` can follow
    (a gRPC Embed sets on_invalid alone, a Classify none): no `on_empty skip` where there is none."""
    if error.hint is None:
        return error
    kept = [
        part
        for part in error.hint.split("; ")
        if all(field in settable for field in _POLICY_ADVICE.findall(part))
    ]
    hint = "; ".join(kept) or None
    if hint == error.hint:
        return error
    return FastaFormatError(
        error.message,
        source=error.source,
        record_id=error.record_id,
        position=error.position,
        record_index=error.record_index,
        hint=hint,
    )


def parse_labels(description: str) -> tuple[str, ...]:
    """Labels from a `label=A;B` token in a FASTA header (or `label="A b;C"`, quoted), in order,
    without empties."""
    match = _LABEL.search(description)
    if not match:
        return ()
    value = next(group for group in match.groups() if group is not None)
    return tuple(label for label in value.split(";") if label)


def normalize_sequence(
    raw: str,
    *,
    on_invalid: OnInvalid = "fail",
    gaps: Gaps = "invalid",
    source: str = "<sequence>",
    record_id: str | None = None,
    record_index: int | None = None,
) -> tuple[str | None, int]:
    """Apply the residue policy to one sequence.

    Returns the normalised sequence (None when `skip` drops it) and how many characters were replaced.
    """
    sequence = "".join(raw.split())
    sequence = sequence.upper() if sequence.isascii() else sequence.translate(_ASCII_UPPER)
    if gaps == "strip":
        sequence = sequence.translate(_NO_GAPS)
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    sequence = sequence.replace("J", "X")
    at = first_non_residue(sequence)
    if at is None:
        return sequence, 0
    if on_invalid == "skip":
        return None, 0
    if on_invalid == "replace":
        replaced, count = _INVALID.subn("X", sequence)
        return replaced, count
    char = sequence[at]
    meaning = _MEANING.get(char, "not an amino-acid letter" if not char.isdigit() else "a digit")
    hint = (
        _GAP_HINT if char in _GAP_CHARACTERS else "on_invalid skip or replace drops or replaces it"
    )
    raise FastaFormatError(
        f"invalid residue {char!r} ({meaning})",
        hint=hint,
        source=source,
        record_id=record_id,
        position=at + 1,
        record_index=record_index,
    )


class _Prefixed(io.RawIOBase):
    """`head` (bytes already read to sniff the format), then the rest of `stream`; closes `stream`
    only when it `owns` it (never stdin)."""

    def __init__(self, head: bytes, stream: IO[bytes], *, owns: bool) -> None:
        self._head = head
        self._stream = stream
        self._owns = owns

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._owns and not self.closed:
            self._stream.close()
        super().close()


@contextmanager
def open_fasta_bytes(path: str | Path) -> Iterator[IO[bytes]]:
    """A FASTA file's bytes, or stdin's (`-`), gunzipped when they start with gzip's magic bytes,
    without a leading UTF-8 byte order mark; a corrupt or truncated .gz or UTF-16 text is one
    `FastaFormatError` naming the source."""
    source = source_name(path)
    if str(path) == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        path = Path(path)
        try:
            raw = path.open("rb")
        except IsADirectoryError:
            raise InvalidInputError(f"{path}: is a folder, not a FASTA file") from None
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InvalidInputError(f"{path}: cannot read it ({exc.strerror})") from None
    head = b""
    while len(head) < len(UTF8_BOM) and (more := raw.read(len(UTF8_BOM) - len(head))):
        head += more
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        if raw is not sys.stdin.buffer:
            raw.close()
        raise FastaFormatError(
            "UTF-16 text (it starts with a UTF-16 byte order mark): FASTA is read as ASCII or "
            "UTF-8; convert it, e.g. iconv -f UTF-16 -t UTF-8",
            source=source,
        )
    head = head.removeprefix(UTF8_BOM)  # what Windows editors put first
    with io.BufferedReader(_Prefixed(head, raw, owns=raw is not sys.stdin.buffer)) as stream:
        try:
            if head[:2] == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
                    if unzipped.peek(len(UTF8_BOM)).startswith(UTF8_BOM):
                        unzipped.read(len(UTF8_BOM))
                    yield unzipped  # type: ignore[misc]
            else:
                yield stream
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise FastaFormatError(
                f"corrupt or truncated gzip stream ({exc})", source=source
            ) from None


def read_fasta(
    path: str | Path,
    *,
    policy: FastaPolicy | None = None,
    stats: ReadStats | None = None,
) -> Iterator[ProteinRecord]:
    """Stream records from a FASTA file (plain or gzip, by content) or stdin (`-`), applying `policy`."""
    yield from _read_file(path, _policy(policy), stats if stats is not None else ReadStats())


def _policy(policy: object) -> FastaPolicy:
    """`policy`, or the default for None; anything but a FastaPolicy is refused, saying so."""
    if policy is None:
        return FastaPolicy()
    if not isinstance(policy, FastaPolicy):
        raise InvalidInputError(
            f"policy is {type(policy).__name__} {policy!r:.60}, not a FastaPolicy: give "
            "FastaPolicy(on_invalid='skip'), say"
        )
    return policy


def check_fasta(
    path: str | Path,
    *,
    policy: FastaPolicy | None = None,
    named_per_problem: int = 3,
    progress: bool = False,
) -> FastaCheck:
    """Read a whole FASTA file once, as `read_fasta` would, and find every record that breaks
    `policy` instead of stopping at the first: a job checks its input before any model work.
    With `progress`, a count of records read shows once the check has taken a second."""
    policy = policy or FastaPolicy()
    stats = ReadStats()
    check = FastaCheck(0, 0, 0)
    records = _read_file(path, policy, stats, partial(check.note, named=named_per_problem))
    bar = progress_bar(
        desc="check", unit="records", unit_scale=True, delay=1.0, disable=not progress
    )
    nucleotides: list[str] = []
    with bar:
        for record in records:
            bar.update()
            if looks_nucleotide(record.sequence):
                nucleotides.append(record.id)
    return replace(
        check,
        nucleotide_ids=tuple(nucleotides[:named_per_problem]),
        nucleotide_like=len(nucleotides),
        headers=stats.records + stats.skipped + sum(check.counts.values()),
        records=stats.records,
        residues=stats.residues,
        gapped_replaced=stats.gapped_replaced,
        skipped=stats.skipped_by(),
    )


def no_records_error(path: str | Path, skipped: dict[str, int] | None = None) -> InvalidInputError:
    """The error of an input that leaves a command nothing to work on: a file without records
    (almost always an upstream step that failed), or one whose every record the policy left out
    (`skipped`: `ReadStats.skipped_by`), said with how many and by which setting."""
    source = source_name(path)
    if not skipped:
        return InvalidInputError(f"{source}: no FASTA records in it; nothing was written")
    total = sum(skipped.values())
    return InvalidInputError(
        f"{source}: all {total} records were skipped ({_skipped_by(skipped)}); nothing was written"
    )


def skipped_note(path: str | Path, kept: int, skipped: dict[str, int]) -> str | None:
    """One line on the records of `path` the policy left out beside the `kept` ones (`skipped`:
    `ReadStats.skipped_by`), worded as `no_records_error` words them; None when none were. A
    command that goes on with the rest says it, or a skip would drop records unsaid."""
    if not skipped:
        return None
    total = sum(skipped.values())
    return (
        f"{source_name(path)}: {total} of {total + kept} records skipped ({_skipped_by(skipped)})"
    )


def _skipped_by(skipped: dict[str, int]) -> str:
    """`{"on_invalid skip": 2}` as `2 by on_invalid skip`, each setting that left records out."""
    return ", ".join(f"{n} by {setting}" for setting, n in skipped.items())


def validate_fasta(
    path: str | Path, *, policy: FastaPolicy | None = None, progress: bool = False
) -> FastaCheck | None:
    """`check_fasta` raising its error, before any model work: a job that would stop hours in on a
    bad record stops now, every bad record named. None for stdin (`-`), read once as it comes."""
    if str(path) == "-":
        return None
    check = check_fasta(path, policy=policy, progress=progress)
    if (error := check.error()) is not None:
        raise error
    if check.gapped_replaced:
        log.warning(
            "%s: %d record(s) with alignment gaps, which on_invalid replace makes X (not the "
            "protein); for aligned input, gaps strip removes them instead",
            path,
            check.gapped_replaced,
        )
    if check.nucleotide_like:
        log.warning(
            "%s: %d of %d record(s) look like DNA or RNA, not protein (at least 90%% A, C, G, "
            "T/U, N: %s): their vectors would mean nothing; translate them first",
            path,
            check.nucleotide_like,
            check.records,
            ", ".join(repr(i) for i in check.nucleotide_ids)
            + (" ..." if check.nucleotide_like > len(check.nucleotide_ids) else ""),
        )
    return check


_NUCLEOTIDE_LETTERS = b"ACGTUN"


def looks_nucleotide(sequence: str, *, min_length: int = 20, share: float = 0.9) -> bool:
    """Whether a normalised sequence is DNA or RNA read as protein: at least `share` of it A, C,
    G, T, U or N (about a quarter in real proteins), and `min_length` long (a short peptide such
    as GAGA is not flagged)."""
    if len(sequence) < min_length:
        return False
    other = len(sequence.encode("ascii", "replace").translate(None, _NUCLEOTIDE_LETTERS))
    return other <= (1 - share) * len(sequence)


def _read_file(
    path: str | Path,
    policy: FastaPolicy,
    stats: ReadStats,
    report: Callable[[FastaFormatError], None] | None = None,
) -> Iterator[ProteinRecord]:
    source = source_name(path)
    with open_fasta_bytes(path) as data:
        handle = io.TextIOWrapper(data, encoding="utf-8", errors="replace")
        first = _peek_first_line(handle)
        if first is not None and not first.startswith(">"):
            raise FastaFormatError(
                "this is not FASTA: the first non-blank line does not start with '>'",
                hint=_what_it_looks_like(first),
                source=source,
            )
        parsed = ((title, raw, None) for title, raw in SimpleFastaParser(_prepend(first, handle)))
        yield from _records(parsed, source, policy, stats, report=report)


def read_fasta_range(
    path: str | Path,
    start: int,
    end: int,
    *,
    policy: FastaPolicy | None = None,
    stats: ReadStats | None = None,
) -> Iterator[ProteinRecord]:
    """Records in bytes [start, end) of a plain FASTA file, a range that begins at a header (a shard).

    Ids are unique within the range only: a shard's reader cannot see the others.
    """
    source = f"{path}@{start}"
    with Path(path).open("rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode("utf-8-sig", errors="replace")  # a BOM at 0
    parsed = ((title, raw, None) for title, raw in SimpleFastaParser(io.StringIO(text)))
    yield from _records(parsed, source, policy or FastaPolicy(), stats or ReadStats())


def refuse_one_string(sequences: object, what: str = "sequences") -> None:
    """A str is iterable, so one sequence (or a file's path) given where a list belongs would be
    taken residue by residue, each letter a protein of its own: refused, saying what to give."""
    if isinstance(sequences, os.PathLike):
        sequences = os.fspath(sequences)
    if not isinstance(sequences, str | bytes):
        return
    text = sequences.decode(errors="replace") if isinstance(sequences, bytes) else sequences
    if text.endswith((".fasta", ".fa", ".faa", ".gz")) or _is_file(text):
        raise InvalidInputError(
            f"{what} is one string, the name of a file ({text!r}): give its records, "
            "protssl.read_fasta(path) (or the client's embed_fasta)"
        )
    raise InvalidInputError(
        f"{what} is one string, not a list of them: give [sequence] for one sequence (a string "
        "would be read residue by residue, each letter a protein)"
    )


def source_name(path: str | Path) -> str:
    """How errors name an input: its path, or `<stdin>` for `-`."""
    return "<stdin>" if str(path) == "-" else str(path)


def refuse_misshapen(sequences: object, ids: object) -> None:
    """Arguments of the wrong shape for sequences (and their ids), refused before any is read:
    one string where a list belongs (`refuse_one_string`), ids as one string, ids beside a mapping
    (whose keys are its ids), and what is no collection at all (None, a number)."""
    refuse_one_string(sequences)
    if not isinstance(sequences, Iterable):
        raise InvalidInputError(
            f"sequences must be a list (or any iterable) of sequences or records, or a mapping of "
            f"id to sequence, not {type(sequences).__name__}"
        )
    if isinstance(ids, str | bytes):
        raise InvalidInputError("ids is one string, not a list of them: give one id per sequence")
    if isinstance(sequences, Mapping) and ids is not None:
        raise InvalidInputError("ids given twice: a mapping's keys are its ids; leave out ids")


def checked_item(index: int, item: object, where: str | None = None) -> str | ProteinRecord:
    """Item `index` of a sequences argument when it is a sequence (a string) or a record (a
    Biopython `SeqRecord`, as `SeqIO.parse` gives them, becomes one: its id, its residues, labels
    from `label=` in its description); anything else is refused naming it (not a TypeError from
    deep inside), as `where` (default `sequences[index]`)."""
    where = where or f"sequences[{index}]"
    if isinstance(item, SeqRecord):
        return _from_seqrecord(where, item)
    if not isinstance(item, str | ProteinRecord):
        raise InvalidInputError(
            f"{where} is {type(item).__name__} {item!r:.40}, not a sequence (a string), "
            "a ProteinRecord or a Biopython SeqRecord"
        )
    return item


def _from_seqrecord(where: str, item: SeqRecord) -> ProteinRecord:
    try:
        residues = str(item.seq)
    except UndefinedSequenceError as exc:  # a length without residues
        raise InvalidInputError(f"{where}: SeqRecord {item.id!r} has no residues ({exc})") from None
    description = str(item.description or "")
    return ProteinRecord(str(item.id), residues, parse_labels(description), description)


def checked_id(index: int, given: object) -> str:
    """Id `index` of an ids argument when it is a string; a number (a pandas index) or anything
    else is refused naming it."""
    if not isinstance(given, str):
        raise InvalidInputError(
            f"ids[{index}] is {type(given).__name__} {given!r:.40}: ids are strings "
            "([str(i) for i in ids] for numbers)"
        )
    return given


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for a path, a NUL in it
        return False


def as_records(items: Sequence[SequenceItem]) -> Sequence[ProteinRecord]:
    """protssl records as they are; a list holding anything else (strings, Biopython records)
    goes whole through `records_from_sequences`, so it meets the FASTA policy or is refused by name."""
    if all(isinstance(item, ProteinRecord) for item in items):
        return items  # type: ignore[return-value]
    return records_from_sequences(items)


def records_from_sequences(
    sequences: Iterable[SequenceItem] | Mapping[str, str],
    *,
    ids: Iterable[str] | None = None,
    policy: FastaPolicy | None = None,
    source: str = "<input>",
    first_index: int = 0,
) -> list[ProteinRecord]:
    """Records from in-memory sequences (or records, or an id -> sequence mapping), with the same
    policy as files; ids default to seq{n}.

    An id is taken as given, spaces included: there is no header to parse (labels come from records).
    Sequences that break the policy raise one FastaFormatError naming them all (by problem), each
    numbered from `first_index` (a chunk of a longer input counts on from the chunks before it).
    """
    refuse_misshapen(sequences, ids)
    if isinstance(sequences, Mapping):  # id -> sequence, as the client takes it
        ids, sequences = list(sequences.keys()), list(sequences.values())
    items = [checked_item(index, item) for index, item in enumerate(sequences)]
    id_list = (
        [checked_id(index, given) for index, given in enumerate(ids)] if ids is not None else None
    )
    if id_list is not None and len(id_list) != len(items):
        raise InvalidInputError(f"{len(id_list)} ids given for {len(items)} sequences")
    entries: list[tuple[str, str, tuple[str, ...] | None]] = []
    for index, item in enumerate(items):
        record_id = id_list[index] if id_list is not None else None
        if isinstance(item, ProteinRecord):
            entries.append((record_id or item.id, item.sequence, item.labels))
        else:
            entries.append((record_id or f"seq{index}", item, None))
    found = FastaCheck(0, 0, 0)
    records = list(
        _records(
            iter(entries),
            source,
            _policy(policy),
            ReadStats(),
            titles_are_ids=True,
            report=found.note,
            first_index=first_index,
        )
    )
    if (error := found.error()) is not None:
        raise error  # every bad one named, not the first
    return records


def _records(
    entries: Iterator[tuple[str, str, tuple[str, ...] | None]],
    source: str,
    policy: FastaPolicy,
    stats: ReadStats,
    *,
    titles_are_ids: bool = False,
    report: Callable[[FastaFormatError], None] | None = None,
    first_index: int = 0,
) -> Iterator[ProteinRecord]:
    """Apply the policy to (title, raw residues, labels or None to parse them from the title).

    A FASTA title is `id description`; with `titles_are_ids` the whole title is the id. A record
    that breaks the policy raises its FastaFormatError, or with `report` is handed to it and left out.
    """
    seen: set[str] = set()
    for index, (title, raw, given_labels) in enumerate(entries, start=first_index):
        try:
            record = _judge(
                index, title, raw, given_labels, source, policy, stats, seen, titles_are_ids
            )
        except FastaFormatError as problem:
            if report is None:
                raise
            report(problem)
            continue
        if record is not None:
            yield record


def _judge(
    index: int,
    title: str,
    raw: str,
    given_labels: tuple[str, ...] | None,
    source: str,
    policy: FastaPolicy,
    stats: ReadStats,
    seen: set[str],
    titles_are_ids: bool,
) -> ProteinRecord | None:
    """One record under the policy: kept, None when `skip` drops it (counted), or raised."""
    if titles_are_ids:
        record_id, description = title, ""
    else:
        record_id, description = _split_title(title)
    if not record_id:
        raise FastaFormatError("header has no id", source=source, record_index=index)
    if control := _CONTROL.search(record_id):
        raise FastaFormatError(
            f"the id has a control character {control.group()!r} at position {control.start() + 1}",
            source=source,
            record_index=index,
        )
    if problem := long_id_problem(record_id):
        raise FastaFormatError(
            problem, source=source, record_id=shortened_id(record_id), record_index=index
        )
    if record_id in seen:
        if policy.on_duplicate == "skip":
            stats.skipped_duplicate += 1
            stats.skipped_ids.append(record_id)
            return None
        raise FastaFormatError(
            "duplicate id (seen earlier in this input)",
            hint="on_duplicate skip keeps the first",
            source=source,
            record_id=record_id,
            record_index=index,
        )
    seen.add(record_id)
    sequence, replaced = normalize_sequence(
        raw,
        on_invalid=policy.on_invalid,
        gaps=policy.gaps,
        source=source,
        record_id=record_id,
        record_index=index,
    )
    if sequence is None:
        stats.skipped_invalid += 1
        stats.skipped_ids.append(record_id)
        return None
    if not sequence:
        if policy.on_empty == "skip":
            stats.skipped_empty += 1
            stats.skipped_ids.append(record_id)
            return None
        raise FastaFormatError(
            "empty record (no residues)",
            hint="on_empty skip leaves it out",
            source=source,
            record_id=record_id,
            record_index=index,
        )
    stats.records += 1
    stats.residues += len(sequence)
    stats.replaced_residues += replaced
    if replaced and policy.gaps == "invalid" and any(gap in raw for gap in _GAP_CHARACTERS):
        stats.gapped_replaced += 1
    labels = parse_labels(description) if given_labels is None else given_labels
    return ProteinRecord(record_id, sequence, labels, description)


def long_id_problem(record_id: str) -> str | None:
    """What is wrong with an id longer than `MAX_ID_BYTES`; None for one that fits."""
    size = len(record_id.encode("utf-8", "surrogatepass"))
    if size <= MAX_ID_BYTES:
        return None
    return (
        f"the id is {size:,} bytes long; ids up to {MAX_ID_BYTES:,} bytes (UTF-8) fit every "
        "output format"
    )


def shortened_id(record_id: str, keep: int = 40) -> str:
    """An id to name a record by in a one-line error: its first `keep` characters, then `…`."""
    return record_id if len(record_id) <= keep else record_id[:keep] + "…"


def _split_title(title: str) -> tuple[str, str]:
    """A header's id (up to the first whitespace: space, tab, ...) and its description."""
    parts = title.split(None, 1)
    return (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("", "")


_OTHER_FORMATS = (
    ("# STOCKHOLM", "a Stockholm alignment: convert it to FASTA (esl-reformat afa FILE, or "
     "Biopython's AlignIO.convert) and embed that with gaps strip"),
    ("CLUSTAL", "a Clustal alignment: convert it to FASTA (Biopython's AlignIO.convert) and "
     "embed that with gaps strip"),
    ("LOCUS ", "a GenBank file: write its protein translations as FASTA first"),
    ("ID   ", "an EMBL or UniProt text entry: get the FASTA download instead"),
    ("@", "FASTQ (sequencing reads): protssl embeds protein sequences in FASTA"),
    ("<", "HTML or XML (a web page saved instead of the file?)"),
    ("{", "JSON (a web service's answer saved instead of the file?)"),
)  # fmt: skip


def _what_it_looks_like(first: str) -> str | None:
    """What a file that is not FASTA seems to be, from its first line, and what to do."""
    for prefix, what in _OTHER_FORMATS:
        if first.startswith(prefix):
            return f"it looks like {what}"
    if first.strip().isalpha():
        return "it looks like a bare sequence: put a header line (>ID) above it"
    return None


def _peek_first_line(handle: IO[str]) -> str | None:
    for line in handle:
        if line.strip():
            return line
    return None


def _prepend(first: str | None, handle: IO[str]) -> Iterator[str]:
    if first is not None:
        yield first
    yield from handle
