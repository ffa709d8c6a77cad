"""protssl: protein embeddings from a masked-residue transformer (ESM-2 architecture)."""

__version__ = "0.1.0"
