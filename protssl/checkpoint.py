"""Model files: safetensors weights + a JSON model card; fair-esm `.pt` import behind a trust check.

A protssl model is a folder holding `model.safetensors` and `model.json`. The card describes
everything needed to rebuild the encoder (architecture, alphabet) and where it came from (sha256 of
the weights, provenance, training recipe). Loading reads the card; nothing is unpickled.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import pickle
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from protssl.alphabet import ALPHABET
from protssl.dtypes import DTypeName
from protssl.durable import make_folder, writing_durably
from protssl.errors import (
    CheckpointError,
    InvalidInputError,
    ModelNotFoundError,
    UntrustedCheckpointError,
    first_line,
)
from protssl.hardware import cpu_has_bf16, usable_device
from protssl.kernels import int8_linear_works
from protssl.model import (
    PRESETS,
    ModelConfig,
    ProteinEncoder,
    init_weights,
    resolve_dtype,
)
from protssl.pooling import POOLED

__all__ = [
    "CARD_NAME",
    "DEFAULT_MODEL_DIR",
    "WEIGHTS_NAME",
    "LoadedModel",
    "ModelCard",
    "encoder_from_fair_esm",
    "export_fair_esm",
    "fair_esm_state_dict",
    "file_sha256",
    "import_fair_esm",
    "load_model",
    "read_card",
    "refuse_to_replace_a_model",
    "refused_global",
    "resolve_model",
    "save_model",
    "torch_load_reason",
    "update_card_training",
]

log = logging.getLogger(__name__)

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "protssl.model"
FORMAT_VERSION = 1
DEFAULT_MODEL_DIR = (Path(__file__).parent / "models" / "protssl-default").resolve()
"""The shipped default model, used when no model is named (`protssl/models` links to the top-level
`models/` in a checkout; a wheel carries a copy)."""

# sha256 of fair-esm checkpoints that may be unpickled without --trust-pickle. Empty on purpose:
# only hashes checked against Meta's own downloads belong here; users extend it per call.
KNOWN_FAIR_ESM_SHA256: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelCard:
    """What a model is and where it came from; stored as `model.json` beside the weights."""

    name: str
    architecture: ModelConfig
    sha256: str
    """sha256 of the safetensors weights file."""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] | None = None

    @property
    def default_layer(self) -> int:
        """The layer served when a caller names none: `recommended_layer` in `training` (what
        `protssl analyze --update-card` or `bench/model_quality.py` measured best), else the last."""
        layer = (self.training or {}).get("recommended_layer")
        last = self.architecture.num_layers
        return layer if isinstance(layer, int) and 0 <= layer <= last else last

    @property
    def recommended_pooling(self) -> str | None:
        """`recommended_pooling` in `training` (what `protssl analyze --update-card` measured best
        among the pooled poolings), or None. New classifiers follow it; bare vectors do not."""
        pooling = (self.training or {}).get("recommended_pooling")
        return pooling if pooling in POOLED else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": self.architecture.to_dict(),
            "alphabet": list(ALPHABET.all_toks),
            "weights": {"file": WEIGHTS_NAME, "sha256": self.sha256},
            "provenance": dict(self.provenance),
            "training": dict(self.training) if self.training is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str) -> ModelCard:
        if data.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not a protssl model card (format={data.get('format')!r})"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: unsupported card version {data.get('format_version')!r}"
            )
        if list(data.get("alphabet", [])) != list(ALPHABET.all_toks):
            raise CheckpointError(f"{source}: the card's alphabet differs from ESM-1b's")
        try:
            return cls(
                name=str(data["name"]),
                architecture=ModelConfig.from_dict(data["architecture"]),
                sha256=str(data["weights"]["sha256"]),
                provenance=data.get("provenance") or {},
                training=data.get("training"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed model card ({exc})") from None


@dataclass(frozen=True)
class LoadedModel:
    """An encoder in eval mode on its device, with the card it came from and the dtype it runs in."""

    encoder: ProteinEncoder
    card: ModelCard
    device: torch.device
    dtype: torch.dtype
    """What activations are held in (float32 for int8 models)."""
    int8: bool = False
    """The blocks' linears run on int8 weights (`--dtype int8`)."""

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @property
    def dtype_name(self) -> str:
        """The name vectors are cached and labelled under: float32, bfloat16 or int8."""
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")

    @property
    def default_layer(self) -> int:
        """The card's `default_layer`: served when a caller names no layer."""
        return self.card.default_layer

    @property
    def recommended_pooling(self) -> str | None:
        """The card's `recommended_pooling`, or None."""
        return self.card.recommended_pooling

    def resolve_layer(self, layer: int | None) -> int:
        """`layer` as 0..num_layers (negative counts back from the last); None is `default_layer`."""
        return self.default_layer if layer is None else self.encoder.resolve_layer(layer)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_only(encoder: ProteinEncoder) -> dict[str, torch.Tensor]:
    """State dict without the tied LM-head alias (safetensors refuses shared storage)."""
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in encoder.state_dict().items()
        if not k.startswith("lm_head.embedding.")
    }


def refuse_to_replace_a_model(directory: str | Path) -> None:
    """A model folder a command is about to write must not hold a model already (its weights and
    card would be replaced, and with them what its sha256 names); `--overwrite` skips this."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).exists() or (directory / CARD_NAME).exists():
        raise InvalidInputError(
            f"model folder {str(directory)!r} holds a model already: give another folder, or "
            "--overwrite to replace it"
        )


def save_model(
    encoder: ProteinEncoder,
    directory: str | Path,
    *,
    name: str,
    provenance: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write `model.safetensors` + `model.json` into `directory` atomically; returns the card."""
    directory = Path(directory)
    make_folder(directory, what="model folder")
    # bytes written by Python, not safetensors' own writer, so that a full disk is an OSError
    data = save_safetensors(_weights_only(encoder), metadata={"format": FORMAT})
    with writing_durably(directory / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    prov = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    prov.update(provenance or {})
    card = ModelCard(
        name=name,
        architecture=encoder.config,
        sha256=hashlib.sha256(data).hexdigest(),
        provenance=prov,
        training=training,
    )
    _write_json_atomic(directory / CARD_NAME, card.to_json())
    return card


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    with writing_durably(path) as tmp, tmp.open("w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_card(directory: Path) -> ModelCard:
    """A protssl model folder's card, checked, without reading the weights."""
    card_path = directory / CARD_NAME
    if not card_path.is_file():
        raise ModelNotFoundError(f"{directory}: expected {CARD_NAME} there")
    try:
        return ModelCard.from_json(json.loads(card_path.read_text()), source=str(card_path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{card_path}: not valid JSON ({exc})") from None


def update_card_training(directory: Path, values: Mapping[str, Any]) -> None:
    """Merge `values` into the card's `training` section; the weights and the rest stay as they are."""
    card_path = directory / CARD_NAME
    read_card(directory)  # a checked protssl card, or a clear error
    card = json.loads(card_path.read_text())
    card["training"] = {**(card.get("training") or {}), **values}
    _write_json_atomic(card_path, card)


def _read_protssl_model(directory: Path) -> tuple[ProteinEncoder, ModelCard]:
    weights = directory / WEIGHTS_NAME
    if not (directory / CARD_NAME).is_file() or not weights.is_file():
        raise ModelNotFoundError(f"{directory}: expected {CARD_NAME} and {WEIGHTS_NAME} there")
    card = read_card(directory)
    actual = file_sha256(weights)
    if actual != card.sha256:
        raise CheckpointError(
            f"{weights}: sha256 {actual[:12]}… does not match the card's {card.sha256[:12]}…"
        )
    encoder = ProteinEncoder(card.architecture)
    state = load_file(str(weights))
    state["lm_head.embedding.weight"] = state["embed_tokens.weight"]
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: weights do not fit the card's architecture ({exc})"
        ) from None
    return encoder, card


def import_fair_esm(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    allowed_sha256: Collection[str] = (),
) -> tuple[ProteinEncoder, ModelCard]:
    """Read a fair-esm ESM-2 `.pt` (a pickle) after the trust check; returns encoder and a card."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file")
    sha = file_sha256(path)
    if not (trust_pickle or sha in KNOWN_FAIR_ESM_SHA256 or sha in set(allowed_sha256)):
        raise UntrustedCheckpointError(
            f"{path} is a pickle (sha256 {sha}); unpickling can run code. "
            "Pass --trust-pickle, or --allow-sha256 with this hash if you know the file."
        )
    data = _unpickle_fair_esm(path)
    try:
        model_cfg = data["cfg"]["model"]
        config = ModelConfig(
            num_layers=int(model_cfg.encoder_layers),
            embed_dim=int(model_cfg.encoder_embed_dim),
            attention_heads=int(model_cfg.encoder_attention_heads),
            ffn_dim=4 * int(model_cfg.encoder_embed_dim),
            token_dropout=bool(getattr(model_cfg, "token_dropout", True)),
        )
        state = {
            k.removeprefix("encoder.sentence_encoder.").removeprefix("encoder."): v
            for k, v in data["model"].items()
        }
    except (KeyError, AttributeError, TypeError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{path}: not an ESM-2 checkpoint ({exc!r})") from None
    try:
        encoder = encoder_from_fair_esm(state, config)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: a tensor shaped unlike its config says
        raise CheckpointError(
            f"{path}: its weights do not fit the ESM-2 its config describes ({first_line(exc)})"
        ) from None
    card = ModelCard(
        name=path.stem,
        architecture=config,
        sha256="",
        provenance={"source": "fair-esm checkpoint", "file": path.name, "file_sha256": sha},
    )
    return encoder, card


def _unpickle_fair_esm(path: Path) -> dict[str, Any]:
    """Load with weights_only first (Namespace allow-listed); fall back to a full unpickle (trusted)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError here
        log.info(
            "%s: loading without unpickling code failed (%s); unpickling it (trusted)",
            path,
            torch_load_reason(exc),
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({first_line(exc)})"
        ) from None


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def refused_global(exc: BaseException) -> str | None:
    """The class or function a `torch.load(weights_only=True)` refused to unpickle (`print`,
    `argparse.Namespace`), or None when it failed for another reason (a corrupt or non-torch file)."""
    found = _REFUSED_GLOBAL.search(str(exc))
    return found.group(1) if found and isinstance(exc, pickle.UnpicklingError) else None


def torch_load_reason(exc: BaseException) -> str:
    """Why a torch.load failed, in one line: torch wraps a weights_only failure in a page of advice
    on allow-listing globals (`torch.serialization.add_safe_globals`), which protssl leaves out for
    its own (--trust-pickle, --allow-sha256)."""
    name = refused_global(exc)
    if name is not None:
        return f"it pickles {name}"
    inner = exc.__context__  # torch raises its advice `from None`: the unpickler's error is here
    if str(exc).startswith("Weights only load failed") and inner is not None:
        return first_line(inner)
    return first_line(exc)


def export_fair_esm(encoder: ProteinEncoder, path: str | Path) -> None:
    """Write a `.pt` that `esm.pretrained.load_model_and_alphabet_core` accepts."""
    config = encoder.config
    if config.ffn_dim != 4 * config.embed_dim:
        raise CheckpointError("fair-esm's ESM2 fixes ffn_dim = 4 x embed_dim; this model differs")
    namespace = argparse.Namespace(
        encoder_layers=config.num_layers,
        encoder_embed_dim=config.embed_dim,
        encoder_attention_heads=config.attention_heads,
        token_dropout=config.token_dropout,
    )
    state = {f"encoder.{k}": v for k, v in fair_esm_state_dict(encoder).items()}
    torch.save({"model": state, "cfg": {"model": namespace}}, Path(path))


def load_model(
    spec: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: DTypeName = "auto",
    trust_pickle: bool = False,
    allowed_sha256: Collection[str] = (),
) -> LoadedModel:
    """Load a model by path (folder, `model.json`, fair-esm `.pt`), preset name, or the shipped default.

    Presets (`esm2-8m`, `esm2-35m`, `esm2-150m`, `esm2-650m`) give random weights: for benchmarks
    and tests, not for science.
    """
    if dtype == "int8" and str(device).partition(":")[0] != "cpu":  # whether or not it is here
        raise InvalidInputError(f"dtype int8 runs on the CPU only, not on {device}; use bfloat16")
    device = usable_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if device.type == "cpu" and torch_dtype == torch.bfloat16 and not cpu_has_bf16():
        log.warning(
            "bfloat16 on a CPU without native bf16 (AVX512-BF16 or AMX) runs on torch's generic "
            "kernels: correct, but about 4x slower than float32, which --dtype auto picks here"
        )
    source = resolve_model(spec)
    if isinstance(source, str):
        encoder = ProteinEncoder(PRESETS[source])
        init_weights(encoder)
        card = ModelCard(
            name=f"{source}-random",
            architecture=encoder.config,
            sha256=_state_sha256(encoder),
            provenance={"source": f"preset {source}, random weights (seed 0)"},
        )
        log.warning("model %s has random weights; its embeddings carry no biology", source)
    elif source.suffix == ".pt":
        encoder, card = import_fair_esm(
            source, trust_pickle=trust_pickle, allowed_sha256=allowed_sha256
        )
        card = ModelCard(card.name, card.architecture, _state_sha256(encoder), card.provenance)
    else:
        encoder, card = _read_protssl_model(source)
    encoder = encoder.to(device=device, dtype=torch_dtype).eval()
    encoder.requires_grad_(False)
    if dtype == "int8":
        encoder.quantize_int8()
        if not int8_linear_works():
            log.warning(
                "int8: torch's quantized engine does not run on this CPU; the int8 weights run "
                "through float32 kernels: the same vectors within int8 precision, no faster"
            )
    return LoadedModel(
        encoder=encoder, card=card, device=device, dtype=torch_dtype, int8=dtype == "int8"
    )


def resolve_model(spec: str | Path | None) -> str | Path:
    """What `load_model(spec)` loads, found without reading it: a preset's name (a str), a fair-esm
    `.pt` or a protssl model folder (a Path; None: the shipped default). A spec that names none of
    them raises ModelNotFoundError, whichever command was given it (`embed`, `info`...)."""
    if spec is None:
        if not (DEFAULT_MODEL_DIR / CARD_NAME).is_file():
            raise ModelNotFoundError(f"the default model is missing from {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    if str(spec) in PRESETS:
        return str(spec)
    path = Path(spec)
    if path.suffix == ".pt" and not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file")
    if path.suffix == ".pt" or path.is_dir():
        return path
    if path.name in (CARD_NAME, WEIGHTS_NAME) and path.exists():
        return path.parent
    raise ModelNotFoundError(
        f"no model at {str(spec)!r}: give a model folder, a fair-esm .pt, or one of {sorted(PRESETS)}"
    )


def _state_sha256(encoder: ProteinEncoder) -> str:
    """sha256 over the weights in a fixed order, for models that have no safetensors file yet."""
    digest = hashlib.sha256()
    for key, value in sorted(_weights_only(encoder).items()):
        digest.update(key.encode())
        digest.update(value.to(torch.float32).numpy().tobytes())
    return digest.hexdigest()


# --- fair-esm interchange: the ESM2 state-dict layout <-> ProteinEncoder's (fused q/k/v) ---------


def encoder_from_fair_esm(
    state_dict: Mapping[str, torch.Tensor], config: ModelConfig
) -> ProteinEncoder:
    """Build an encoder from an `esm.model.esm2.ESM2` state dict (contact head dropped)."""
    encoder = ProteinEncoder(config)
    encoder.load_state_dict(_from_fair_esm_keys(state_dict, config.num_layers))
    return encoder


def fair_esm_state_dict(encoder: ProteinEncoder) -> dict[str, torch.Tensor]:
    """State dict in `esm.model.esm2.ESM2` layout (no contact head, no rotary buffers)."""
    ours = encoder.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        if key.startswith("lm_head.embedding."):
            continue
        if ".self_attn.qkv_proj." in key:
            prefix, kind = key.split(".qkv_proj.")
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True
            ):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
        elif ".mlp." in key:
            out[key.replace(".mlp.", ".")] = value.clone()
        else:
            out[key] = value.clone()
    out["lm_head.weight"] = ours["embed_tokens.weight"].clone()
    for index in range(encoder.config.num_layers):
        out[f"layers.{index}.self_attn.rot_emb.inv_freq"] = encoder.rotary.inv_freq.clone()
    return out


def _from_fair_esm_keys(
    state_dict: Mapping[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Map fair-esm ESM2 parameter names onto ProteinEncoder's (fusing q/k/v)."""
    source = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith("contact_head.") and not k.endswith("rot_emb.inv_freq")
    }
    out: dict[str, torch.Tensor] = {}
    try:  # a tensor the state dict lacks is named
        for index in range(num_layers):
            prefix = f"layers.{index}"
            for kind in ("weight", "bias"):
                parts = [
                    source.pop(f"{prefix}.self_attn.{n}.{kind}")
                    for n in ("q_proj", "k_proj", "v_proj")
                ]
                out[f"{prefix}.self_attn.qkv_proj.{kind}"] = torch.cat(parts, dim=0)
                for name in ("fc1", "fc2"):
                    out[f"{prefix}.mlp.{name}.{kind}"] = source.pop(f"{prefix}.{name}.{kind}")
        embed_tokens = source["embed_tokens.weight"]
    except KeyError as exc:
        raise CheckpointError(f"fair-esm state dict lacks {exc.args[0]}") from None
    lm_weight = source.pop("lm_head.weight", None)
    out.update(source)
    out["lm_head.embedding.weight"] = embed_tokens
    if lm_weight is not None and not torch.equal(lm_weight, embed_tokens):
        raise CheckpointError("fair-esm lm_head.weight is not tied to embed_tokens.weight")
    return out
