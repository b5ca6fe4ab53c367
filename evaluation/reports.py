"""The evaluation's report: JSON for machines and a markdown table beside it for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plumbing.atomic_files import write_text_atomic


def _figure(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_report(report: dict[str, Any]) -> str:
    """A markdown table of a report written by `run_evaluation`, with the command that produced it."""
    settings, results = report["settings"], report["results"]
    lines = [f"## {report['task']}: {Path(settings['model']).name} on {Path(settings['data']).name}", ""]
    if settings.get("protocol"):
        lines += [
            f"Protocol `{settings['protocol']['name']}` at {settings['protocol']['image_size']} px ({settings['protocol']['reference']}).",
            "",
        ]
    if "headline" in results:
        headline = ", ".join(f"{key} {_figure(value)}" for key, value in results["headline"].items() if key != "method")
        lines += [f"**Headline ({results['headline']['method']})**: {headline}.", ""]
    if report["task"] == "retrieval":
        ks = settings["ks"]
        header = ["images", "captions"] + [f"I2T R@{k}" for k in ks] + [f"T2I R@{k}" for k in ks] + ["rsum"]
        row = [results["num_images"], results["num_captions"]] + [results[f"i2t_R@{k}"] for k in ks]
        row += [results[f"t2i_R@{k}"] for k in ks] + [results["rsum"]]
        lines += [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            "| " + " | ".join(map(_figure, row)) + " |",
        ]
    else:
        ks = settings["ks"]
        groups = ["", "thing_", "stuff_"] if f"thing_mean_class_top{ks[0]}" in results[settings["methods"][0]] else [""]
        names = {"": "mean-class", "thing_": "thing mean-class", "stuff_": "stuff mean-class"}
        header = ["method", "boxes", "classes"] + [f"Top-{k}" for k in ks]
        header += [f"{names[group]} Top-{k}" for group in groups for k in ks]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in settings["methods"]:
            figures = results[method]
            row = [method, figures["num_samples"], f"{figures['num_classes_evaluated']}/{figures['num_classes']}"]
            row += [figures[f"top{k}"] for k in ks] + [
                figures[f"{group}mean_class_top{k}"] for group in groups for k in ks
            ]
            lines.append("| " + " | ".join(map(_figure, row)) + " |")
        missing = results[settings["methods"][0]]["classes_without_samples"]
        if missing:
            lines += ["", f"Classes without samples (left out of the per-class means): {', '.join(map(str, missing))}."]
        if results["boxes_dropped"]:
            lines += ["", f"Boxes dropped by the processor: {results['boxes_dropped']}."]
    lines += ["", "Command:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: str | Path) -> str:
    """Writes the report as JSON to `out` and its markdown table beside it (`.md`); returns the markdown."""
    out = Path(out)
    markdown = markdown_report(report)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown)
    return markdown


__all__ = ["markdown_report", "write_report"]
