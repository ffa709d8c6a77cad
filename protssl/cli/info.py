"""`protssl info`: what a bug report needs when figures differ between machines.

Versions, the CPU and its instruction sets, the dtype `auto` picks and the fast paths of each
dtype (`protssl.info.describe`), the model `--model` names (found as `embed` finds it; read from its card, no weights loaded)
and the default store.
"""

from __future__ import annotations

import argparse
import json

from protssl.cli.args import add_db_arg, add_model_arg, store_config
from protssl.cli.commands import Command

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    add_model_arg(parser)
    add_db_arg(parser)
    parser.set_defaults(func=_info)


COMMANDS = (
    Command(
        "info",
        _build,
        help="versions, CPU instruction sets, dtypes and fast paths, default model and store",
        description="What a bug report needs when figures differ between machines.",
    ),
)


def _model_summary(spec: str | None) -> dict[str, object]:
    """The model a command would load, found as `embed --model` finds it (a model that is not
    there is the same error), described from its card alone (no weights read)."""
    from protssl.checkpoint import read_card, resolve_model
    from protssl.model import PRESETS

    source = resolve_model(spec)
    if isinstance(source, str):
        return {"path": None, "preset": source, "layers": PRESETS[source].num_layers}
    if source.suffix == ".pt":
        return {"path": str(source), "fair_esm": True}
    card = read_card(source)
    return {
        "path": str(source),
        "name": card.name,
        "sha256": card.sha256,
        "layers": card.architecture.num_layers,
        "default_layer": card.default_layer,
        "recommended_pooling": card.recommended_pooling,
    }


def _model_line(model: dict[str, object]) -> str:
    """`_model_summary` in words."""
    if "preset" in model:
        return (
            f"preset {model['preset']}, random weights, {model['layers']} layers (its sha256 is "
            "known once they are made)"
        )
    if "fair_esm" in model:
        return (
            f"fair-esm checkpoint {model['path']} (described once loaded; import-esm makes a card)"
        )
    pooling = model["recommended_pooling"]
    return (
        f"{model['name']} (sha256 {str(model['sha256'])[:12]}) at {model['path']}; "
        f"layer {model['default_layer']} unless named"
        + (
            f", recommended pooling {pooling} (the default is mean)"
            if pooling not in (None, "mean")
            else ""
        )
    )


def _info(args: argparse.Namespace) -> int:
    from protssl.hardware import fit_threads_to_cpu_budget
    from protssl.info import describe

    fit_threads_to_cpu_budget()  # as the commands that compute do: their threads are shown
    info = describe()
    info["default_model"] = _model_summary(args.model)
    info["default_store"] = store_config(args).redacted_url()
    if args.json:
        print(json.dumps(info))
        return 0
    paths = info["fast_paths"]
    assert isinstance(paths, dict)
    model = info["default_model"]
    assert isinstance(model, dict)
    lines = [
        f"protssl {info['protssl']}, torch {info['torch']}, Python {info['python']}",
        f"cpu: {info['cpu']} ({info['cores']} cores, "
        + (f"CPU quota {info['cpu_quota']:g}, " if info["cpu_quota"] is not None else "")
        + f"torch threads {info['threads']})",
        f"isa: {info['isa']}",
        f"kernels: torch {info['torch_capability']}, oneDNN bf16 {_yes(info['onednn_bf16'])}, "
        f"native bf16 {_yes(info['native_bf16'])}",
        f"auto dtype: {info['auto_dtype']} on cpu"
        + (f", bfloat16 on {info['cuda']}" if info["cuda"] else ""),
        *(
            f"fast paths ({dtype}): "
            + (", ".join(name for name, on in flags.items() if on) or "none")
            for dtype, flags in paths.items()
        ),
        f"default model: {_model_line(model)}",
        f"default store: {info['default_store']}",
    ]
    print("\n".join(lines))
    return 0


def _yes(flag: object) -> str:
    return "yes" if flag else "no"
