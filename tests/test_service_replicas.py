"""Several service replicas on one PostgreSQL: what one computes or stores, the other serves.

Two real `python -m service` processes (what a load balancer would spread calls across), started
at once on a fresh schema: the migration lock lets one create it while the other waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from service_support import real_records, save_tiny_model, wait_for_line

import protssl
from protssl.fasta import read_fasta

SERVING = r"serving protssl.v1 on (127.0.0.1:\d+)"

pytestmark = [pytest.mark.slow, pytest.mark.service, pytest.mark.postgres]


@contextmanager
def replica(model_dir: Path, database_url: str) -> Iterator[subprocess.Popen[str]]:
    """One `python -m service` on a free port against `database_url`; SIGTERM on exit."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, "-m", "service", "--port", "0", "--metrics-port", "off"]
    command += ["--model", str(model_dir), "--dtype", "float32", "--database-url", database_url]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
        assert process.returncode == 0, rest
    finally:
        process.kill()
        process.wait()


def test_two_replicas_share_the_cache_and_the_classifiers(
    postgres_url: str, sample_fasta: Path, tmp_path: Path
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = real_records(sample_fasta, 6, max_length=400)
    examples = list(read_fasta(Path(__file__).parents[1] / "examples" / "labelled.fasta"))
    by_label: dict[str, list[protssl.ProteinRecord]] = {}
    for record in examples:
        by_label.setdefault(record.labels[0], []).append(record)
    support = [r for group in list(by_label.values())[:2] for r in group[:4]]
    query = [group[5] for group in list(by_label.values())[:2]]
    with ExitStack() as stack:
        processes = [stack.enter_context(replica(model_dir, postgres_url)) for _ in range(2)]
        a, b = (wait_for_line(p, SERVING)[0].group(1) for p in processes)
        first, second = (protssl.Client(address, timeout=120) for address in (a, b))
        stack.callback(first.close)
        stack.callback(second.close)

        computed = first.embed(records)
        assert not any(computed.cached)
        served = second.embed(records)  # never seen by this replica: PostgreSQL has it
        assert all(served.cached) and np.array_equal(served.vectors, computed.vectors)

        created = first.create_classifier("families", support, method="prototype")
        assert (created.name, created.version, created.examples) == ("families", 1, 8)
        through_b = second.classify("families", query)
        through_a = first.classify("families", query)
        assert [p.label for p in through_b] == [p.label for p in through_a]
        assert [p.id for p in through_b] == [r.id for r in query]
        added = second.add_examples("families", [query[0]])
        assert added.version == 2 and first.get_classifier("families").version == 2
