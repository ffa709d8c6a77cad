"""The report's figures, drawn from `analyze`'s result alone (matplotlib, no pyplot global state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from protssl.pooling import SEGMENTS

__all__ = ["FIGURES", "draw_figures"]

FIGURES = ("information.png", "geometry.png", "learning_curves.png", "selection.png")
_POOLING_STYLE = {
    "mean": ("tab:blue", "o"),
    "bos": ("tab:orange", "s"),
    "max": ("tab:green", "^"),
    "segments": ("tab:purple", "D"),
}
_BASELINE_STYLE = {
    "composition_z": ("tab:grey", "--", "z-scored composition"),
    "kmer3": ("tab:brown", ":", "3-mer frequencies"),
    "composition_segments_z": ("tab:olive", "--", f"z-scored composition of {SEGMENTS} stretches"),
}
_DPI = 120


def _information(result: dict[str, Any], path: Path) -> None:
    info = result["information"]
    names = ["uniform over 20", "unigram (residue frequencies)", "model (masked residues)"]
    bits = [math.log2(20), info["unigram_bits_per_residue"], info["model_bits_per_residue"]]
    figure = Figure(figsize=(7, 2.6))
    axes = figure.subplots()
    bars = axes.barh(names, bits, color=["lightgrey", "tab:grey", "tab:blue"])
    axes.bar_label(bars, labels=[f"{b:.2f}" for b in bits], padding=3)
    axes.invert_yaxis()
    axes.set_xlim(0, math.log2(20) * 1.15)
    axes.set_xlabel("bits per residue on held-out records (lower is better)")
    axes.set_title(
        f"Information: the model saves {info['bits_saved_per_residue']:.2f} bits/residue "
        f"over residue frequencies ({info['records']} records)",
        fontsize=10,
    )
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")


def _per_layer(axes: Axes, values: dict[str, list[float]], title: str, ylabel: str) -> None:
    for pooling, series in values.items():
        colour, marker = _POOLING_STYLE[pooling]
        axes.plot(range(len(series)), series, marker=marker, color=colour, label=pooling)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("layer (0 = token embeddings)")
    axes.set_ylabel(ylabel)
    axes.set_xticks(range(len(next(iter(values.values())))))
    axes.grid(alpha=0.3)


def _geometry(result: dict[str, Any], path: Path) -> None:
    geometry = result["geometry"]["by_pooling"]
    sets = result["labelled"]
    panels = [
        ("alignment", "alignment (two views; lower = closer)", "mean squared distance"),
        ("uniformity", "uniformity (lower = more spread)", "log mean exp(-2 d²)"),
        ("effective_rank", "effective rank (RankMe)", "directions used"),
    ]
    count = len(panels) + len(sets)
    columns = 3
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, (key, title, ylabel) in zip(grid, panels, strict=False):
        _per_layer(axes, {p: v[key] for p, v in geometry.items()}, title, ylabel)
    k = result["config"]["neighbours"]
    for axes, (name, values) in zip(grid[len(panels) :], sets.items(), strict=False):
        _per_layer(axes, values["purity"], f"{k}-NN purity: {name}", "neighbours sharing the label")
    for axes in grid[count:]:
        axes.set_visible(False)
    grid[0].legend(title="pooling", fontsize=8)
    figure.suptitle(
        f"Geometry per layer ({result['geometry']['records']} held-out records, "
        "vectors centred then unit-normalised)"
    )
    figure.savefig(path, dpi=_DPI)


def _learning_curves(result: dict[str, Any], path: Path) -> None:
    sets = {name: s for name, s in result["labelled"].items() if "fewshot" in s}
    shots = result["config"]["shots"]
    chosen = result["selection"]["recommended"]
    last = result["model"]["layers"]
    lines = [(chosen["pooling"], chosen["layer"], "tab:blue", "-")]
    if (chosen["pooling"], chosen["layer"]) != ("mean", last):
        lines.append(("mean", last, "tab:cyan", "-."))
    figure = Figure(figsize=(5.2 * max(1, len(sets)), 4.2), layout="constrained")
    grid = figure.subplots(1, max(1, len(sets)), squeeze=False).ravel()
    for axes, (name, values) in zip(grid, sets.items(), strict=False):
        drawn = [
            (f"model, layer {layer} {pooling}", values["fewshot"][pooling][layer], colour, style)
            for pooling, layer, colour, style in lines
        ]
        drawn += [
            (label, values["baselines"][key], colour, style)
            for key, (colour, style, label) in _BASELINE_STYLE.items()
        ]
        for label, curve, colour, style in drawn:
            low = [m - s for m, s in zip(curve["mean"], curve["std"], strict=True)]
            high = [m + s for m, s in zip(curve["mean"], curve["std"], strict=True)]
            axes.plot(shots, curve["mean"], style, marker="o", color=colour, label=label)
            axes.fill_between(shots, low, high, color=colour, alpha=0.15)
        axes.set_xscale("log", base=2)
        axes.set_xticks(shots, [str(s) for s in shots])
        axes.set_ylim(0, 1)
        axes.set_xlabel("labelled examples per class")
        axes.set_ylabel("top-1 accuracy (prototype head)")
        axes.set_title(f"{name}: {values['classes']} classes", fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"Data efficiency: mean ± sd over {result['config']['draws']} draws, "
        f"{result['config']['queries']} queries per class"
    )
    figure.savefig(path, dpi=_DPI)


def _selection(result: dict[str, Any], path: Path) -> None:
    scores = result["selection"]["score"]
    poolings = list(scores)
    layers = len(scores[poolings[0]])
    figure = Figure(figsize=(1.0 * layers + 2.2, 0.6 * len(poolings) + 1.6), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow([scores[p] for p in poolings], cmap="viridis", aspect="auto")
    best = result["selection"]["best"]
    for row, pooling in enumerate(poolings):
        for column, value in enumerate(scores[pooling]):
            star = "★ " if (pooling, column) == (best["pooling"], best["layer"]) else ""
            text_colour = "black" if value > 0.5 * max(max(s) for s in scores.values()) else "white"
            axes.text(
                column,
                row,
                f"{star}{value:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color=text_colour,
            )
    axes.set_xticks(range(layers))
    axes.set_yticks(range(len(poolings)), poolings)
    axes.set_xlabel("layer")
    axes.set_title("Pooling × layer score (mean of curve areas and purities; ★ best)", fontsize=10)
    figure.colorbar(image, ax=axes)
    figure.savefig(path, dpi=_DPI)


def draw_figures(result: dict[str, Any], directory: Path) -> list[Path]:
    """Write the figures of FIGURES into `directory`; the paths, in that order."""
    paths = [directory / name for name in FIGURES]
    for draw, path in zip(
        (_information, _geometry, _learning_curves, _selection), paths, strict=True
    ):
        draw(result, path)
    return paths
