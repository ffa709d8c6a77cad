"""protssl: protein embeddings from a masked-residue transformer (ESM-2 architecture)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protssl.client import Client

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    """`protssl.Client` loads the SDK (and grpc) on first use, so `import protssl` stays light."""
    if name == "Client":
        from protssl.client import Client

        return Client
    raise AttributeError(f"module 'protssl' has no attribute {name!r}")
