"""Few-shot fixtures on real labelled proteins: IS transposase families, Pfam domains, EC enzymes.

The heads are tested on amino-acid + dipeptide composition vectors (they carry real family signal
and cost nothing to compute); the model path on a tiny random-weight encoder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protssl.checkpoint import LoadedModel, load_model, save_model
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import METHODS, FewShotClassifier, FewShotConfig
from protssl.model import ModelConfig, ProteinEncoder, init_weights

from .support import two_layers

FAMILIES = 8


@pytest.fixture(scope="session")
def is_records(transposase_fastas: list[Path]) -> dict[str, list[ProteinRecord]]:
    by_family: dict[str, list[ProteinRecord]] = defaultdict(list)
    for path in transposase_fastas:
        for record in read_fasta(path, policy=FastaPolicy(on_invalid="skip")):
            by_family[record.labels[0]].append(record)
    return by_family


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def pfam_records(shared_file: Callable[..., Path]) -> list[ProteinRecord]:
    return list(read_fasta(shared_file("families/pfam_seed_small.fasta")))


@pytest.fixture(scope="session")
def fitted(
    is_split: tuple[list[ProteinRecord], list[ProteinRecord]],
) -> dict[str, FewShotClassifier]:
    """A classifier of each method on the support transposases' composition vectors."""
    support, _ = is_split
    return {
        method: FewShotClassifier.fit(
            two_layers(support),
            [r.labels for r in support],
            FewShotConfig(method=method),
            sequences=[r.sequence for r in support],
        )
        for method in METHODS
    }


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def windowed_model(windowed_model_dir: Path) -> LoadedModel:
    return load_model(windowed_model_dir, dtype="float32")
