"""The committed stubs in protssl/_proto/ are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_do_not_drift(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path / "_proto")],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "protssl" / "_proto"
    fresh = {p.name: p.read_text() for p in (tmp_path / "_proto").iterdir() if p.is_file()}
    current = {p.name: p.read_text() for p in committed.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(current), "stub files differ; run `make proto`"
    stale = [name for name in fresh if fresh[name] != current[name]]
    assert not stale, f"{stale} drifted from proto/; run `make proto` and commit"


def test_stubs_import_as_a_package() -> None:
    from protssl._proto import protssl_pb2, protssl_pb2_grpc

    # the generated `from protssl.v1 import ...` was rewritten to the package-relative module
    assert protssl_pb2_grpc.protssl_dot_v1_dot_protssl__pb2 is protssl_pb2
    assert protssl_pb2.DESCRIPTOR.package == "protssl.v1"
    names = set(protssl_pb2.DESCRIPTOR.services_by_name)
    assert names == {"EmbeddingService", "ClassifierService", "TokenService"}
