"""Harmony benchmark: the global-region trade-off of each loss configuration, at toy scale on the synthetic shapes.

    python -m benchmarks.harmony                      # the default settings (2 CPU cores, under 30 minutes)
    python -m benchmarks.harmony --quick --out /tmp/h  # a seconds-long smoke run of the whole pipeline

1. pre-trains a tiny CLIP from scratch with GC only (the "pre-trained CLIP"), with the project's training loop;
2. fine-tunes it, with the same budget, under each loss configuration: GC only; GR only (CLIPSelf-like: a frozen copy
   of the pre-trained model is the teacher); GC+GR (FineCLIP-like, without region captions); GC+LRC; GC+LRC+GR
   (HarmoCLIP);
3. evaluates every model on the held-out split: retrieval R@1 both directions (global) and box Top-1 with dense
   region features (region), plus the crop-and-encode baseline;
4. writes, under ``--out`` (default ``outputs/harmony``): ``harmony.json`` (every figure, every setting, the
   command), ``harmony.md`` (the table), ``harmony.png`` (global against region accuracy) and ``harmony.log``.

Each model lives in ``<out>/runs/<row>-<fingerprint>``, the fingerprint being a hash of everything its weights depend
on (its training settings and, for fine-tunes, the pre-trained model's). A row whose folder already holds its model
and evaluation is reused, not retrained; a row interrupted mid-training resumes from its last checkpoint. Settings
are the fields of `HarmonySettings`; each is a command-line option (``--finetune-steps 100``), and ``--config`` reads
them from a YAML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":
    # Run as a command, before torch loads OpenMP: idle threads sleep instead of spinning. On a 2-core machine shared
    # with other jobs, spinning threads made these small models' training steps about 8 times slower. A user's own
    # setting wins; importing this module changes nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from conversion.cli import CommandParser, log_to_file, run_command, setup_logging  # noqa: E402
from conversion.saving import write_text_atomic  # noqa: E402
from evaluation.evaluate import BOX_METHODS, DEFAULT_TEMPLATES  # noqa: E402
from training.config import TrainConfig  # noqa: E402

logger = logging.getLogger("harmoclip.harmony")

ROW_FILE = "row.json"  # written last in a row's folder: the row is finished
RESULTS_NAME = "harmony"


@dataclass(frozen=True)
class LossConfiguration:
    """One row of the benchmark: a name for folders, a label for the table, the loss weights."""

    key: str
    label: str
    gc: float
    lrc: float
    gr: float

    @property
    def losses(self) -> str:
        return "+".join(name for name, weight in (("GC", self.gc), ("LRC", self.lrc), ("GR", self.gr)) if weight > 0)


PRETRAINED = LossConfiguration("pretrained", "pre-trained CLIP (reference)", 1.0, 0.0, 0.0)
FINETUNE_CONFIGURATIONS: tuple[LossConfiguration, ...] = (
    LossConfiguration("gc", "GC only", 1.0, 0.0, 0.0),
    LossConfiguration("gr", "GR only (CLIPSelf-like)", 0.0, 0.0, 1.0),
    LossConfiguration("gc-gr", "GC+GR (FineCLIP-like, no region captions)", 1.0, 0.0, 1.0),
    LossConfiguration("gc-lrc", "GC+LRC", 1.0, 1.0, 0.0),
    LossConfiguration("gc-lrc-gr", "GC+LRC+GR (HarmoCLIP)", 1.0, 1.0, 1.0),
)
CONFIGURATION_KEYS = tuple(configuration.key for configuration in FINETUNE_CONFIGURATIONS)


@dataclass
class HarmonySettings:
    """Everything the benchmark's figures depend on. The defaults run on 2 CPU cores in under 30 minutes."""

    seed: int = 0
    # ---- data: the synthetic shapes (training/data/synthetic.py)
    synthetic_num_train: int = 2000
    synthetic_num_val: int = 200
    synthetic_image_size: int = 64
    # ---- model: a from-scratch preset of training/builders.py
    model_preset: str = "tiny"
    image_size: int = 64
    patch_size: int = 8
    # ---- pre-training (GC only, from scratch)
    pretrain_steps: int = 300
    pretrain_batch_size: int = 64
    pretrain_learning_rate: float = 5e-4
    pretrain_warmup_steps: int = 30
    # ---- fine-tuning (the same budget for every configuration)
    finetune_steps: int = 100
    finetune_batch_size: int = 64
    finetune_learning_rate: float = 1e-4
    finetune_warmup_steps: int = 10
    weight_decay: float = 0.1
    gr_crop_scale: float = 1.5
    # ---- evaluation and rows
    eval_batch_size: int = 64
    configurations: tuple[str, ...] = CONFIGURATION_KEYS

    def __post_init__(self) -> None:
        self.configurations = tuple(self.configurations)
        unknown = [key for key in self.configurations if key not in CONFIGURATION_KEYS]
        if unknown or not self.configurations:
            raise ValueError(f"`configurations` must be a non-empty subset of {list(CONFIGURATION_KEYS)}, got {list(self.configurations)}")
        if len(set(self.configurations)) != len(self.configurations):
            raise ValueError(f"`configurations` lists a configuration twice: {list(self.configurations)}")
        for name in ("synthetic_num_train", "synthetic_num_val", "pretrain_steps", "pretrain_batch_size", "finetune_steps",
                     "finetune_batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}")
        for name in ("pretrain_batch_size", "finetune_batch_size"):
            if getattr(self, name) > self.synthetic_num_train:
                raise ValueError(f"`{name}` ({getattr(self, name)}) exceeds `synthetic_num_train` ({self.synthetic_num_train})")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["configurations"] = list(self.configurations)
        return values


# Small enough for a test: the whole pipeline in seconds (figures are meaningless at this size).
QUICK_SETTINGS: dict[str, Any] = dict(
    synthetic_num_train=8, synthetic_num_val=8, synthetic_image_size=32, model_preset="micro", image_size=32,
    pretrain_steps=2, pretrain_batch_size=4, pretrain_warmup_steps=1,
    finetune_steps=2, finetune_batch_size=4, finetune_warmup_steps=1, eval_batch_size=8,
)


# ---------------------------------------------------------------------------------------------------- training configs


def synthetic_folder(settings: HarmonySettings, out: Path) -> Path:
    """The data set's folder, named by its settings (one folder per distinct data set)."""
    return out / f"synthetic-{settings.synthetic_num_train}-{settings.synthetic_num_val}-{settings.synthetic_image_size}px-seed{settings.seed}"


def _train_config(settings: HarmonySettings, out: Path, configuration: LossConfiguration, stage: str,
                  init_from: Path | None, output_dir: Path) -> TrainConfig:
    steps = getattr(settings, f"{stage}_steps")
    return TrainConfig(
        data_format="synthetic", synthetic_dir=str(synthetic_folder(settings, out)),
        synthetic_num_train=settings.synthetic_num_train, synthetic_num_val=settings.synthetic_num_val,
        synthetic_image_size=settings.synthetic_image_size,
        init_from=str(init_from) if init_from else None, model_preset=settings.model_preset,
        image_size=settings.image_size, patch_size=settings.patch_size, gr_teacher="frozen", gr_crop_scale=settings.gr_crop_scale,
        loss_gc_weight=configuration.gc, loss_lrc_weight=configuration.lrc, loss_gr_weight=configuration.gr,
        seed=settings.seed, batch_size=getattr(settings, f"{stage}_batch_size"), max_steps=steps,
        learning_rate=getattr(settings, f"{stage}_learning_rate"), warmup_steps=getattr(settings, f"{stage}_warmup_steps"),
        weight_decay=settings.weight_decay, output_dir=str(output_dir), log_every=max(1, min(10, steps // 10)),
        checkpoint_every=max(1, steps // 4), keep_checkpoints=1, resume=True, evaluate_at_end=False,
        eval_batch_size=settings.eval_batch_size, report_to="none",
        extra={"harmony_row": configuration.key, "harmony_stage": stage},
    )


# Fields that name places or control logging, not what the weights become (the BPE file is the shipped one).
_NOT_FINGERPRINTED = ("synthetic_dir", "output_dir", "init_from", "tokenizer_bpe", "resume", "log_every", "checkpoint_every",
                      "keep_checkpoints", "report_to", "evaluate_at_end", "num_workers", "extra")


def fingerprint(config: TrainConfig, parent: str | None = None) -> str:
    """A short hash of what a row's model and figures depend on: its training settings, the fingerprint of the model
    it starts from (`parent`) and the evaluation protocol."""
    recipe = {key: value for key, value in config.to_dict().items() if key not in _NOT_FINGERPRINTED}
    recipe.update(parent=parent, eval_methods=list(BOX_METHODS), eval_templates=list(DEFAULT_TEMPLATES))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------- rows


def summarize(evaluation: dict[str, Any]) -> dict[str, float]:
    """The benchmark's figures (percent) from `evaluate_model`'s {task: results}."""
    retrieval, boxcls = evaluation["retrieval"], evaluation["boxcls"]
    figures = {
        "i2t_R@1": float(retrieval["i2t_R@1"]),
        "t2i_R@1": float(retrieval["t2i_R@1"]),
        "box_top1_dense": float(boxcls["dense"]["top1"]),
        "box_top1_crop": float(boxcls["crop"]["top1"]),
        "box_mean_class_top1_dense": float(boxcls["dense"]["mean_class_top1"]),
        "i2t_R@5": float(retrieval["i2t_R@5"]),
        "t2i_R@5": float(retrieval["t2i_R@5"]),
    }
    figures["mean_R@1"] = (figures["i2t_R@1"] + figures["t2i_R@1"]) / 2
    return figures


def read_finished_row(folder: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The record of a finished row in `folder` made with `expected_fingerprint`, else None."""
    path = folder / ROW_FILE
    if not path.is_file() or not (folder / "model" / "config.json").is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("fingerprint") == expected_fingerprint else None


def run_row(configuration: LossConfiguration, config: TrainConfig, row_fingerprint: str, show_progress: bool = True) -> dict[str, Any]:
    """Trains (or resumes) and evaluates one row, or reuses it when finished. Returns the row's record."""
    from modeling_harmoclip import HarmoCLIPModel
    from training.builders import evaluate_model, load_processor
    from training.train import train

    folder = Path(config.output_dir)
    record = read_finished_row(folder, row_fingerprint)
    if record is not None:
        logger.info("%s: reusing the finished row in %s", configuration.label, folder)
        return {**record, "reused": True}
    logger.info("%s: training in %s (losses %s, %d steps)", configuration.label, folder, configuration.losses, config.max_steps)
    started, cpu_started = time.perf_counter(), time.process_time()
    model_dir = train(config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # Evaluate the saved folder (what a user would load), not the in-memory weights.
    model = HarmoCLIPModel.from_pretrained(model_dir).eval()
    processor = load_processor(model_dir, region_mode=config.region_mode)
    started = time.perf_counter()
    evaluation = evaluate_model(model, processor, config, folder, show_progress=show_progress)
    eval_seconds = time.perf_counter() - started
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the model is saved; optimiser states are not needed
    record = {
        "key": configuration.key, "label": configuration.label, "losses": configuration.losses,
        "loss_weights": {"gc": configuration.gc, "lrc": configuration.lrc, "gr": configuration.gr},
        "fingerprint": row_fingerprint, "folder": str(folder), "model": str(model_dir), "init_from": config.init_from,
        "figures": summarize(evaluation), "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": eval_seconds,
        "train_config": config.to_dict(),
    }
    write_text_atomic(folder / ROW_FILE, json.dumps(record, indent=2) + "\n")
    logger.info("%s: %s (train %.0f s, eval %.0f s)", configuration.label, json.dumps(record["figures"]), train_seconds, eval_seconds)
    return {**record, "reused": False}


# ---------------------------------------------------------------------------------------------------- outputs


def _format(value: float) -> str:
    return f"{value:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The table of every row, chance levels and the command."""
    settings = report["settings"]
    lines = [
        "| configuration | losses | I2T R@1 | T2I R@1 | mean R@1 (global) | box Top-1 dense (region) | box Top-1 crop |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        figures = row["figures"]
        lines.append("| " + " | ".join([
            row["label"], row["losses"], _format(figures["i2t_R@1"]), _format(figures["t2i_R@1"]), _format(figures["mean_R@1"]),
            _format(figures["box_top1_dense"]), _format(figures["box_top1_crop"]),
        ]) + " |")
    chance, environment = report["chance"], report["environment"]
    lines += [
        "",
        f"Held-out split: {settings['synthetic_num_val']} images ({chance['num_boxes']} boxes, {chance['num_classes']} classes). "
        f"Chance: R@1 {_format(chance['R@1'])}, box Top-1 {_format(chance['box_top1'])}. Figures in percent. "
        f"Pre-training: {settings['pretrain_steps']} steps of GC from scratch; each fine-tune: {settings['finetune_steps']} steps "
        f"of batch {settings['finetune_batch_size']} at learning rate {settings['finetune_learning_rate']:g} from the pre-trained model.",
        "",
        f"Wall-clock time of this run: {report['wall_seconds'] / 60:.1f} min ({report['rows_reused']} row(s) reused) on "
        f"{environment['device']} with {environment['torch_threads']} threads; 1-minute load average "
        f"{environment['load_average_at_start'][0]:.1f} at the start, {environment['load_average_at_end'][0]:.1f} at the end.",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_harmony(rows: Sequence[dict[str, Any]], path: Path, chance: dict[str, float] | None = None) -> Path:
    """Scatter of global accuracy (mean retrieval R@1) against region accuracy (box Top-1, dense), one labelled point
    per row; the pre-trained reference is a star. Written as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5), dpi=110)
    markers = ("o", "s", "^", "D", "v", "P", "X")
    for index, row in enumerate(rows):
        x, y = row["figures"]["box_top1_dense"], row["figures"]["mean_R@1"]
        reference = row["key"] == PRETRAINED.key
        axis.scatter([x], [y], s=220 if reference else 80, marker="*" if reference else markers[index % len(markers)],
                     color="black" if reference else f"C{index}", zorder=3, label=row["label"], alpha=0.85)
        # Alternate above / below: neighbouring rows often land close together.
        axis.annotate("pre-trained" if reference else row["losses"], (x, y), textcoords="offset points",
                      xytext=(7, 5 if index % 2 == 0 else -12), fontsize=8)
    reference_rows = [row for row in rows if row["key"] == PRETRAINED.key]
    if reference_rows:
        axis.axvline(reference_rows[0]["figures"]["box_top1_crop"], color="black", linestyle="--", linewidth=0.8,
                     label="pre-trained, crop-and-encode box Top-1")
    if chance:
        axis.axhline(chance["R@1"], color="grey", linestyle=":", linewidth=1, label="chance")
        axis.axvline(chance["box_top1"], color="grey", linestyle=":", linewidth=1)
    axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    axis.set_xlabel("region: box Top-1, dense features (%)")
    axis.set_ylabel("global: mean retrieval R@1, I2T and T2I (%)")
    axis.set_title("Harmony benchmark (synthetic shapes, held-out split)")
    axis.grid(alpha=0.3)
    axis.margins(0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def chance_levels(pretrained_folder: Path) -> dict[str, Any]:
    """Chance R@1 (one correct image among N) and box Top-1 (1 / classes), from the reference row's evaluation."""
    tasks = json.loads((pretrained_folder / "eval.json").read_text())["tasks"]
    num_images = tasks["retrieval"]["results"]["num_images"]
    num_classes = len(tasks["boxcls"]["settings"]["class_names"])
    return {"R@1": 100.0 / num_images, "box_top1": 100.0 / num_classes, "num_classes": num_classes,
            "num_boxes": tasks["boxcls"]["results"]["num_boxes"]}


# ---------------------------------------------------------------------------------------------------- the benchmark


def run_benchmark(settings: HarmonySettings, out: str | Path = "outputs/harmony", command: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Pre-trains, fine-tunes every configuration, evaluates, writes harmony.{json,md,png}; returns the report."""
    out = Path(out)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    runs = out / "runs"
    pretrain = _train_config(settings, out, PRETRAINED, "pretrain", None, runs / "pending")
    pretrain_fingerprint = fingerprint(pretrain)
    pretrain = dataclasses.replace(pretrain, output_dir=str(runs / f"{PRETRAINED.key}-{pretrain_fingerprint}"))
    configurations = [c for c in FINETUNE_CONFIGURATIONS if c.key in settings.configurations]
    progress = tqdm(total=1 + len(configurations), desc="harmony rows", unit="row", disable=not show_progress, dynamic_ncols=True)
    rows = [run_row(PRETRAINED, pretrain, pretrain_fingerprint, show_progress)]
    progress.update(1)
    pretrained_model = Path(rows[0]["model"])
    for configuration in configurations:
        config = _train_config(settings, out, configuration, "finetune", pretrained_model, runs / "pending")
        row_fingerprint = fingerprint(config, parent=pretrain_fingerprint)
        config = dataclasses.replace(config, output_dir=str(runs / f"{configuration.key}-{row_fingerprint}"))
        rows.append(run_row(configuration, config, row_fingerprint, show_progress))
        progress.update(1)
    progress.close()
    report = {
        "benchmark": "harmony", "settings": settings.to_dict(), "command": command, "working_directory": os.getcwd(),
        "rows": rows, "chance": chance_levels(Path(rows[0]["folder"])),
        "wall_seconds": time.perf_counter() - started, "rows_reused": sum(row["reused"] for row in rows),
        "train_and_eval_seconds_of_rows": sum(row["train_seconds"] + row["eval_seconds"] for row in rows),
        "environment": _environment(load_at_start),
    }
    write_outputs(report, out)
    return report


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """harmony.json, harmony.md and harmony.png in `out`."""
    write_text_atomic(out / f"{RESULTS_NAME}.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / f"{RESULTS_NAME}.md", markdown_table(report))
    plot_harmony(report["rows"], out / f"{RESULTS_NAME}.png", report["chance"])


def _environment(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """What the wall-clock time depends on: threads, cores, OpenMP's wait policy, other jobs (load averages)."""
    import torch

    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": [round(value, 2) for value in load_at_start],
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------------------- command line


def build_parser() -> CommandParser:
    parser = CommandParser(prog="python -m benchmarks.harmony", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/harmony", help="results folder (default: outputs/harmony)")
    parser.add_argument("--config", default=None, help="YAML file of settings (the fields of HarmonySettings)")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps: checks the pipeline in seconds")
    for item in dataclasses.fields(HarmonySettings):
        flags = [f"--{item.name.replace('_', '-')}", f"--{item.name}"]
        if item.name == "configurations":
            parser.add_argument(*flags, dest=item.name, nargs="+", choices=CONFIGURATION_KEYS, default=None,
                                help=f"fine-tuning rows (default: all of {' '.join(CONFIGURATION_KEYS)})")
        else:
            parser.add_argument(*flags, dest=item.name, type=type(item.default), default=None, help=f"default: {item.default!r}")
    return parser


def settings_from_args(args: argparse.Namespace) -> HarmonySettings:
    """Defaults, then `--quick`, then the YAML file, then the options given."""
    values: dict[str, Any] = dict(QUICK_SETTINGS) if args.quick else {}
    known = {item.name for item in dataclasses.fields(HarmonySettings)}
    if args.config:
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"`--config`: file not found: {args.config}")
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {args.config} must hold a mapping of setting: value")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"config file {args.config}: unknown setting(s) {unknown}; known: {sorted(known)}")
        values.update(loaded)
    values.update({name: value for name, value in vars(args).items() if name in known and value is not None})
    return HarmonySettings(**values)


def run_harmony(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark the command line `argv` describes; writes harmony.{json,md,png,log}; returns the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except TypeError as error:  # a YAML value of the wrong type for a setting
        raise ValueError(f"`--config` {args.config}: {error}") from None
    out = Path(args.out)
    with log_to_file(out / f"{RESULTS_NAME}.log"):
        command = shlex.join(["python", "-m", "benchmarks.harmony", *argv])
        logger.info("command: %s", command)
        logger.info("settings: %s", json.dumps(settings.to_dict()))
        report = run_benchmark(settings, out, command)
        table = markdown_table(report)
        print(table)
        logger.info("results:\n%s", table)
        logger.info("wrote %s, %s and %s", *(out / f"{RESULTS_NAME}.{suffix}" for suffix in ("json", "md", "png")))
        return report


def main(argv: Sequence[str] | None = None) -> int:
    """The harmony benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> None:
        setup_logging()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data loader forks after the tokenizer ran
        run_harmony(argv)

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
