"""What a model report measures on: the corpus's held-out split and labelled sets, sampled the same
way every time (seeded), from the shared data or, where it is absent, from examples/."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protssl.analysis.config import DEFAULT_DATA_DIR, EXAMPLES_DIR
from protssl.errors import InvalidInputError
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta

__all__ = [
    "DataSource",
    "LabelledSet",
    "LabelledSpec",
    "balanced",
    "find_data",
    "load_labelled",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSpec:
    """A labelled set: its name, the FASTA files (`label=` headers) and what it is used for."""

    name: str
    files: tuple[Path, ...]
    fewshot: bool
    """Whether it gets a learning curve (else only neighbour purity: too few records per class)."""


@dataclass(frozen=True)
class DataSource:
    """Where the corpus and the labelled sets come from, and what that means for the figures."""

    name: str
    """`shared` or `examples`."""
    note: str
    """What the source means for the figures, for the report."""
    corpus: Path
    labelled: tuple[LabelledSpec, ...]


@dataclass(frozen=True)
class LabelledSet:
    """Single-label records of one set, at most `per_class` of each label."""

    name: str
    ids: tuple[str, ...]
    sequences: tuple[str, ...]
    labels: tuple[str, ...]
    fewshot: bool

    @property
    def classes(self) -> int:
        return len(set(self.labels))


def find_data(directory: Path | str | None = None) -> DataSource:
    """The shared data in `directory`; with none given, in DEFAULT_DATA_DIR where its corpus is
    there, else examples/ (and a warning); `"examples"` asks for examples/. A folder given without
    the corpus is refused: falling back would write rough figures, into a card too, for a typo."""
    if directory == "examples":
        return _examples(f"examples/ as asked ({_EXAMPLES_HOLD}), so the figures are rough")
    given = directory is not None
    directory = DEFAULT_DATA_DIR if directory is None else Path(directory)
    corpus = directory / "pretrain" / "pretrain_corpus.fasta"
    if corpus.is_file():
        return DataSource(
            name="shared",
            corpus=corpus,
            labelled=(
                LabelledSpec("ec_split10", (directory / "ec" / "clean_split10.fasta",), True),
                LabelledSpec(
                    "is_families",
                    (directory / "families" / "prokka_IS_transposase_families.fasta",),
                    True,
                ),
                LabelledSpec("pfam", (directory / "families" / "pfam_seed_small.fasta",), False),
            ),
            note=f"shared data at {directory}",
        )
    if given:
        raise InvalidInputError(
            f"--data {directory}: no pretrain/pretrain_corpus.fasta there; give the shared data "
            "folder, or --data examples for rough figures from examples/"
        )
    note = (
        f"no shared data at {directory} (pretrain/pretrain_corpus.fasta): using examples/ "
        f"({_EXAMPLES_HOLD}), so the figures are rough"
    )
    log.warning(note)
    return _examples(note)


_EXAMPLES_HOLD = "300 corpus records, 6 IS families of 20; no EC or Pfam set"


def _examples(note: str) -> DataSource:
    """examples/: the records and IS families the repository ships."""
    return DataSource(
        name="examples",
        corpus=EXAMPLES_DIR / "proteins.fasta",
        labelled=(
            LabelledSpec(
                "is_families",
                (EXAMPLES_DIR / "labelled.fasta", EXAMPLES_DIR / "labelled_query.fasta"),
                True,
            ),
        ),
        note=note,
    )


def balanced(
    records: Sequence[ProteinRecord], per_class: int, min_class: int
) -> list[ProteinRecord]:
    """Up to `per_class` records of each first label with at least `min_class` members (seeded)."""
    groups: dict[str, list[ProteinRecord]] = defaultdict(list)
    for record in records:
        if record.labels:
            groups[record.labels[0]].append(record)
    rng = np.random.default_rng(0)
    chosen: list[ProteinRecord] = []
    for label in sorted(groups):
        members = groups[label]
        if len(members) >= min_class:
            picks = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
            chosen.extend(members[i] for i in sorted(picks))
    return chosen


def load_labelled(spec: LabelledSpec, *, per_class: int, min_class: int) -> LabelledSet:
    """The single-label records of `spec`'s files, `balanced` (invalid letters become X)."""
    policy = FastaPolicy(on_invalid="replace", on_duplicate="skip")
    records = [
        record
        for path in spec.files
        for record in read_fasta(path, policy=policy)
        if len(record.labels) == 1
    ]
    chosen = balanced(records, per_class, min_class)
    return LabelledSet(
        name=spec.name,
        ids=tuple(r.id for r in chosen),
        sequences=tuple(r.sequence for r in chosen),
        labels=tuple(r.labels[0] for r in chosen),
        fewshot=spec.fewshot,
    )
