"""protssl: protein embeddings from a masked-residue transformer (ESM-2 architecture).

The in-process API::

    import protssl

    model = protssl.load_model()                 # the shipped default model
    records = list(protssl.read_fasta("proteins.fasta"))
    result = protssl.embed(records, model=model)  # result.ids, result.vectors (N, D) float32

`import protssl` loads none of torch, SQLAlchemy or grpc: each public name is imported from its
module on first use, so the `protssl` command starts without them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from protssl.errors import ProtsslError

if TYPE_CHECKING:
    from protssl.api import EmbedResult, embed
    from protssl.batching import WindowPolicy
    from protssl.checkpoint import LoadedModel, load_model
    from protssl.client import Client
    from protssl.embedding import EmbedConfig, Embedding, Provenance
    from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta, validate_fasta

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
    "validate_fasta",
]

_LAZY = {
    "Client": "protssl.client",
    "EmbedConfig": "protssl.embedding",
    "EmbedResult": "protssl.api",
    "Embedding": "protssl.embedding",
    "FastaPolicy": "protssl.fasta",
    "LoadedModel": "protssl.checkpoint",
    "ProteinRecord": "protssl.fasta",
    "Provenance": "protssl.embedding",
    "WindowPolicy": "protssl.batching",
    "embed": "protssl.api",
    "load_model": "protssl.checkpoint",
    "read_fasta": "protssl.fasta",
    "validate_fasta": "protssl.fasta",
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
