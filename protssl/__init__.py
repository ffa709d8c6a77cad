"""protssl: protein embeddings from a masked-residue transformer (ESM-2 architecture).

The in-process API::

    import protssl

    model = protssl.load_model()                 # the shipped default model
    records = list(protssl.read_fasta("proteins.fasta"))
    result = protssl.embed(records, model=model)  # result.ids, result.vectors (N, D) float32

`import protssl` loads none of torch, SQLAlchemy or grpc: each public name is imported from its
module on first use, so the `protssl` command's `--help` and the SDK stay quick to start.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protssl.errors import ProtsslError

if TYPE_CHECKING:
    import numpy as np

    from protssl.batching import WindowPolicy
    from protssl.checkpoint import LoadedModel, load_model
    from protssl.client import Client
    from protssl.embedding import EmbedConfig, Embedding, Provenance
    from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta

__version__ = "0.1.0"

__all__ = [
    "Client",
    "EmbedConfig",
    "EmbedResult",
    "Embedding",
    "FastaPolicy",
    "LoadedModel",
    "ProteinRecord",
    "ProtsslError",
    "Provenance",
    "WindowPolicy",
    "__version__",
    "embed",
    "load_model",
    "read_fasta",
]

_LAZY = {
    "Client": "protssl.client",
    "EmbedConfig": "protssl.embedding",
    "Embedding": "protssl.embedding",
    "FastaPolicy": "protssl.fasta",
    "LoadedModel": "protssl.checkpoint",
    "ProteinRecord": "protssl.fasta",
    "Provenance": "protssl.embedding",
    "WindowPolicy": "protssl.batching",
    "load_model": "protssl.checkpoint",
    "read_fasta": "protssl.fasta",
}
"""Public name -> the module that defines it, imported when the name is first read."""


def _renamed_embed_module() -> types.ModuleType:
    """`protssl.embed`, the module renamed `protssl.embedding`: forwards to it, imported on first use.

    It sits in sys.modules without being an attribute of `protssl`, so `from protssl.embed import
    EmbedConfig` keeps working and never replaces the function `protssl.embed`."""
    module = types.ModuleType(f"{__name__}.embed", "Renamed protssl.embedding.")

    def forward(name: str) -> Any:
        if name.startswith("__"):  # tools probe every module's dunders (inspect: __file__)
            raise AttributeError(name)
        renamed = importlib.import_module(f"{__name__}.embedding")
        sys.modules[module.__name__] = renamed
        return getattr(renamed, name)

    module.__dict__["__getattr__"] = forward  # PEP 562: looked up in the module namespace
    return module


sys.modules.setdefault(f"{__name__}.embed", _renamed_embed_module())


@dataclass(frozen=True)
class EmbedResult:
    """Vectors in input order: `vectors` is (N, D) for mean/bos pooling, a list of (L, D) per residue."""

    ids: list[str]
    vectors: np.ndarray | list[np.ndarray]
    provenance: list[Provenance]


def embed(
    records_or_sequences: Iterable[ProteinRecord | str],
    *,
    model: LoadedModel | str | Path | None = None,
    ids: Sequence[str] | None = None,
    pooling: str = "mean",
    layer: int = -1,
    max_tokens: int = 4096,
    window: WindowPolicy | None = None,
    policy: FastaPolicy | None = None,
) -> EmbedResult:
    """Embed records or plain sequences; returns ids and float32 vectors in input order.

    `model` is a loaded model, a path or preset name, or None for the shipped default. Plain
    strings get ids `seq0`, `seq1`, ... unless `ids` is given; they follow the FASTA policy.
    """
    import numpy as np

    from protssl.batching import WindowPolicy
    from protssl.checkpoint import LoadedModel, load_model
    from protssl.embedding import EmbedConfig, embed_records
    from protssl.fasta import records_from_sequences

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    records = records_from_sequences(records_or_sequences, ids=ids, policy=policy)
    config = EmbedConfig(
        pooling=pooling,  # type: ignore[arg-type]
        layer=layer,
        max_tokens=max_tokens,
        window=window or WindowPolicy(),
    )
    by_id = {e.id: e for e in embed_records(records, loaded, config)}
    order = [r.id for r in records]
    vectors = [by_id[i].vector for i in order]
    stacked: np.ndarray | list[np.ndarray] = (
        vectors if pooling == "per-residue" else np.stack(vectors) if vectors else np.zeros((0, 0))
    )
    return EmbedResult(ids=order, vectors=stacked, provenance=[by_id[i].provenance for i in order])


def __getattr__(name: str) -> Any:
    """A public name's module is imported on first use (PEP 562), so `import protssl` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
