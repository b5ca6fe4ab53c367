"""Command line of the harmony benchmark: settings from the defaults, `--quick`, a YAML file and the options (typed
by `training/options.py`), then the run and its report."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.evaluate import DEFAULT_TEMPLATES
from modeling_harmoclip.configuration_harmoclip import RECIPES
from plumbing.command_line import CommandParser, log_to_file, run_command, setup_logging
from training.data.synthetic import VOCABULARIES
from training.options import add_dataclass_options, dataclass_values, read_settings_file

from . import __doc__ as PACKAGE_DOC
from .report import RESULTS_NAME, build_report, markdown_table, property_lines, write_outputs
from .rows import CONFIGURATION_KEYS, PRETRAINED, QUICK_SETTINGS, HarmonySettings, loss_names
from .runs import chance_levels, environment, logger, run_seeds, synthetic_folder


def run_benchmark(
    settings: HarmonySettings,
    out: str | Path = "outputs/harmony",
    command: str = "",
    show_progress: bool = True,
    pretrain_only: bool = False,
) -> dict[str, Any]:
    """Pre-trains each seed's toy CLIP, fine-tunes every row from it (not with `pretrain_only`), evaluates,
    aggregates over seeds; writes harmony.{json,md,png}; returns the report."""
    out = Path(out)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    records = run_seeds(settings, out, show_progress, pretrain_only)
    every = [record for per_seed in records.values() for record in per_seed]
    first_pretrain = records[PRETRAINED.key][0]["train_config"]
    pretrain = {
        "max_steps": first_pretrain["max_steps"],
        "losses": loss_names(first_pretrain),
        "object_views": first_pretrain.get("object_views", 0.0),
        "eval_templates": list(first_pretrain.get("eval_templates") or DEFAULT_TEMPLATES),
        "train_seconds_per_seed": [record["train_seconds"] for record in records[PRETRAINED.key]],
    }
    chance = chance_levels(
        [Path(record["folder"]) for record in records[PRETRAINED.key]],
        [synthetic_folder(settings, out, seed) for seed in settings.seeds],
    )
    report = build_report(
        records,
        settings.to_dict(),
        chance,
        pretrain,
        {
            "command": command,
            "working_directory": os.getcwd(),
            "wall_seconds": time.perf_counter() - started,
            "rows_run": len(every),
            "rows_reused": sum(record["reused"] for record in every),
            "train_and_eval_seconds_of_rows": sum(r["train_seconds"] + r["eval_seconds"] for r in every),
            "environment": environment(load_at_start),
        },
    )
    write_outputs(report, out)
    return report


def build_parser() -> CommandParser:
    parser = CommandParser(prog="python -m experiments.harmony", description=PACKAGE_DOC.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/harmony", help="results folder (default: outputs/harmony)")
    parser.add_argument("--config", default=None, help="YAML file of settings (the fields of HarmonySettings)")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps: a smoke run of the pipeline")
    parser.add_argument(
        "--pretrain-only",
        "--pretrain_only",
        action="store_true",
        help="pre-train (or reuse) each seed's toy CLIP, measure its property, and stop",
    )
    add_dataclass_options(
        parser,
        HarmonySettings,
        skip=("rows", "recipes"),
        choices={"configurations": CONFIGURATION_KEYS, "synthetic_vocabulary": tuple(VOCABULARIES)},
        help={"configurations": f"fine-tuning rows (default: all of {' '.join(CONFIGURATION_KEYS)})"},
    )
    parser.add_argument(
        "--row",
        dest="rows",
        action="append",
        default=None,
        metavar="KEY:FIELD=VALUE,...",
        help="an extra row (ablation): a new key and TrainConfig fields, e.g. 'lrc-half:loss_lrc_weight=0.5'; repeatable",
    )
    parser.add_argument(
        "--recipe",
        dest="recipes",
        action="append",
        default=None,
        choices=tuple(RECIPES),
        help="a named recipe added as a row ('recipe-NAME'), its fields over the benchmark's base; repeatable",
    )
    return parser


def settings_from_args(args: Any) -> HarmonySettings:
    """Defaults, then `--quick`, then the YAML file, then the options given; every value read as its field's type."""
    values: dict[str, Any] = dict(QUICK_SETTINGS) if args.quick else {}
    if args.config:
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"`--config`: file not found: {args.config}")
        loaded = read_settings_file(args.config, HarmonySettings.__dataclass_fields__, "setting", list_known=True)
        values.update(dataclass_values(HarmonySettings, loaded, where=f"config file {args.config}: `{{name}}`"))
    values.update(dataclass_values(HarmonySettings, vars(args)))
    return HarmonySettings(**values)


def run_harmony(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark the command line `argv` describes; writes harmony.{json,md,png,log}; returns the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    out = Path(args.out)
    with log_to_file(out / f"{RESULTS_NAME}.log"):
        command = shlex.join(["python", "-m", "experiments.harmony", *argv])
        logger.info("command: %s", command)
        logger.info("settings: %s", json.dumps(settings.to_dict()))
        report = run_benchmark(settings, out, command, pretrain_only=args.pretrain_only)
        text = "\n".join(property_lines(report["conclusion"])) if args.pretrain_only else markdown_table(report)
        print(text)
        logger.info("results:\n%s", text)
        logger.info("wrote %s, %s and %s", *(out / f"{RESULTS_NAME}.{suffix}" for suffix in ("json", "md", "png")))
        return report


def main(argv: Sequence[str] | None = None) -> int:
    """The harmony benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> None:
        setup_logging()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data loader forks after the tokenizer ran
        run_harmony(argv)

    return run_command(run)
