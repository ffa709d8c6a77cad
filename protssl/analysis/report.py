"""A model report on disk: report.md, report.html (figures embedded), report.json, the PNGs.

`headline` is the short summary: the figures a reader and the model card keep, and the JSON line
`protssl analyze` prints last.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from protssl.analysis.plots import draw_figures
from protssl.durable import make_folder

__all__ = ["headline", "write_report"]


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures worth a line: information, the chosen pooling and layer, and what they give."""
    chosen = result["selection"]["recommended"]
    pooling, layer = chosen["pooling"], chosen["layer"]
    geometry = result["geometry"]["by_pooling"][pooling]
    info = result["information"]
    out: dict[str, Any] = {
        "model": result["model"]["name"],
        "sha256": result["model"]["sha256"][:16],
        "data": result["data"]["source"],
        "bits_saved_per_residue": info["bits_saved_per_residue"],
        "perplexity": round(info["perplexity"], 3),
        "unigram_perplexity": round(info["unigram_perplexity"], 3),
        "recommended_layer": layer,
        "recommended_pooling": pooling,
        "best_compared": result["selection"]["best"],
        "alignment": geometry["alignment"][layer],
        "uniformity": geometry["uniformity"][layer],
        "effective_rank": geometry["effective_rank"][layer],
        "purity": {name: s["purity"][pooling][layer] for name, s in result["labelled"].items()},
        "fewshot_shots": result["config"]["shots"],
        "fewshot": {
            name: {
                "model": s["fewshot"][pooling][layer]["mean"],
                **{key: curve["mean"] for key, curve in s["baselines"].items()},
            }
            for name, s in result["labelled"].items()
            if "fewshot" in s
        },
        "seconds": result["seconds"],
    }
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def _markdown(result: dict[str, Any], top: dict[str, Any], figures: list[Path]) -> str:
    info, model = result["information"], result["model"]
    selection = result["selection"]
    shots = result["config"]["shots"]
    lines = [
        f"# Model report: {model['name']} ({model['sha256'][:12]})",
        "",
        f"Data: {result['data']['note']}. {model['layers']} layers, run in {model['dtype']}; "
        f"{result['seconds']} s.",
        "",
        "## Information",
        "",
        f"Held-out masked residues ({info['records']} records, {info['residues']:,} residues): "
        f"{info['model_bits_per_residue']:.3f} bits per residue against "
        f"{info['unigram_bits_per_residue']:.3f} for residue frequencies: "
        f"**{info['bits_saved_per_residue']:.3f} bits saved** (perplexity "
        f"{info['perplexity']:.2f} vs {info['unigram_perplexity']:.2f}).",
        "",
        f"![information]({figures[0].name})",
        "",
        "## Pooling and layer",
        "",
        f"Score: {selection['how']}. Best compared: {selection['best']['pooling']} pooling at "
        f"layer {selection['best']['layer']} ({selection['best']['score']}); "
        f"**recommended (served poolings): {top['recommended_pooling']} at layer "
        f"{top['recommended_layer']}**.",
        "",
        f"![selection]({figures[3].name})",
        "",
        "## Data efficiency",
        "",
        f"Top-1 accuracy of the prototype head by labelled examples per class (mean of "
        f"{result['config']['draws']} draws).",
        "",
    ]
    for name, curves in top["fewshot"].items():
        lines += [f"**{name}**", ""]
        lines += _table(
            ["features", *(f"{k}-shot" for k in shots)],
            [[key, *(f"{v:.3f}" for v in means)] for key, means in curves.items()],
        )
        lines.append("")
    lines += [f"![learning curves]({figures[2].name})", "", "## Geometry", ""]
    neighbours = result["config"]["neighbours"]
    lines += _table(
        ["at the recommended pooling and layer", "value"],
        [
            ["alignment (lower: views closer)", top["alignment"]],
            ["uniformity (lower: more spread)", top["uniformity"]],
            ["effective rank (RankMe)", top["effective_rank"]],
            *([f"{neighbours}-NN purity, {name}", v] for name, v in top["purity"].items()),
        ],
    )
    lines += ["", f"![geometry]({figures[1].name})", ""]
    if result["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()), ""]
    return "\n".join(lines)


def _html(markdown: str, figures: list[Path], title: str) -> str:
    """The Markdown's text as paragraphs and tables, with each figure embedded as a data URI."""
    images = {
        path.name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        for path in figures
    }
    body: list[str] = []
    table: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            body.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in rest
                )
                + "</table>"
            )
            table = []
        if line.startswith("!["):
            name = line[line.index("(") + 1 : -1]
            body.append(f"<p><img src='{images[name]}' alt='{html.escape(name)}'></p>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line:
            text = html.escape(line)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            body.append(f"<p>{text}</p>")
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:75em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            "img{max-width:100%}</style></head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def write_report(result: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Write the figures, report.md, report.html and report.json into `directory`; the headline."""
    make_folder(directory, what="report folder")
    figures = draw_figures(result, directory)
    top = headline(result)
    markdown = _markdown(result, top, figures)
    (directory / "report.md").write_text(markdown)
    title = f"Model report: {result['model']['name']}"
    (directory / "report.html").write_text(_html(markdown, figures, title))
    full = {"headline": top, **result}
    (directory / "report.json").write_text(json.dumps(full, indent=1) + "\n")
    return top
