"""Helpers for the few-shot tests: composition 'layers', labelled FASTA files, the CLI face."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from protssl.cli import build_parser
from protssl.evaluation import composition_features
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta


def two_layers(records: list[ProteinRecord]) -> dict[int, np.ndarray]:
    """Two 'layers' of composition vectors: raw and square-rooted (a variance-stabilised view)."""
    x = composition_features([r.sequence for r in records])
    return {1: x, 2: np.sqrt(x)}


def sequences(records: list[ProteinRecord]) -> list[str]:
    """The records' sequences (the hybrid method aligns them)."""
    return [r.sequence for r in records]


def write_fasta(path: Path, records: list[ProteinRecord]) -> Path:
    """`records` as labelled FASTA (`>ID label=A;B`)."""
    path.write_text("".join(f">{r.id} label={';'.join(r.labels)}\n{r.sequence}\n" for r in records))
    return path


def run_cli(argv: list[str]) -> int:
    """Run the few-shot commands in this process, as `protssl ARGV` would."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def enzyme_slice(clean_split10: Path) -> list[ProteinRecord]:
    """5 sequences of each of 12 single-label EC-4 classes of CLEAN split10 on which held-out
    precision never reaches 0.9 (kNN on composition is right for 45% of held-out support)."""
    by_label: dict[str, list[ProteinRecord]] = defaultdict(list)
    for record in read_fasta(clean_split10, policy=FastaPolicy(on_invalid="skip")):
        if len(record.labels) == 1:
            by_label[record.labels[0]].append(record)
    classes = sorted(label for label, rows in by_label.items() if len(rows) >= 6)[36:48]
    return [r for label in classes for r in by_label[label][:5]]
