"""The harmony rule over both worlds (docs/harmony_candidates.md): reads each world's `harmony.json`, applies
`statistics.decide_harmony` to their candidates, and prints and writes the decision.

    python -m experiments.harmony.decide outputs/harmony-basic/harmony.json outputs/harmony-rich/harmony.json \\
        --out outputs/harmony-decision.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import CommandParser, run_command

from .statistics import decide_harmony


def read_world(path: str | Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(world name, its harmony rule, row labels) from a `harmony.json`; a one-line error for another file."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"`reports`: cannot read {path}: {error}") from None
    rule = report.get("conclusion", {}).get("harmony_rule")
    if not rule or not rule.get("candidates"):
        raise ValueError(f"`reports`: {path} has no harmony-rule candidates (run the candidates' rows first)")
    world = report["settings"].get("synthetic_vocabulary", "basic")
    return world, rule, {row["key"]: row["label"] for row in report["rows"]}


def decision_markdown(worlds: dict[str, dict[str, Any]], labels: dict[str, str], decision: dict[str, Any]) -> str:
    """Per candidate, whether it qualifies in each world and its score summed over them; the winner and why."""
    names = list(worlds)
    lines = [
        "| candidate | " + " | ".join(f"qualifies, {name}" for name in names) + " | score, summed over the worlds |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for key, score in decision["scores"].items():
        cells = ["yes" if worlds[name]["candidates"][key]["qualifies"] else "no" for name in names]
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + f" | {score:+.1f} |")
    winner = labels.get(decision["winner"], decision["winner"]) if decision["winner"] else "none"
    return "\n".join(lines + ["", f"Winner: **{winner}** ({decision['reason']}).", ""])


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit code."""

    def run() -> str:
        parser = CommandParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("reports", nargs="+", help="one harmony.json per world")
        parser.add_argument("--out", default=None, help="markdown file to write (a .json beside it)")
        args = parser.parse_args(argv)
        worlds: dict[str, dict[str, Any]] = {}
        labels: dict[str, str] = {}
        for path in args.reports:
            world, rule, row_labels = read_world(path)
            if world in worlds:
                raise ValueError(f"`reports`: two reports of the {world!r} world")
            worlds[world] = rule
            labels.update(row_labels)
        decision = decide_harmony(worlds)
        text = decision_markdown(worlds, labels, decision)
        if args.out:
            out = Path(args.out)
            write_text_atomic(out, text)
            write_text_atomic(out.with_suffix(".json"), json.dumps({"worlds": worlds, **decision}, indent=2) + "\n")
        return text

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
