"""Harmony benchmark: the global-region trade-off of each loss configuration, at toy scale on the synthetic shapes,
over several seeds, with an open-vocabulary region test.

    python -m benchmarks.harmony                      # the default settings (3 seeds, 2 CPU cores, under 30 minutes)
    python -m benchmarks.harmony --quick --out /tmp/h  # a seconds-long smoke run of the whole pipeline
    python -m benchmarks.harmony --configurations gc harmoclip --row "gc-lrc-half:loss_lrc_weight=0.5,loss_gr_weight=0"

For each seed (which sets the data, the initialisation and the sampling):

1. generates the synthetic shapes (training/data/synthetic.py) with `synthetic_held_out` colour-shape combinations
   kept out of the training split: they are never drawn there, so never named in a training caption;
2. pre-trains a tiny CLIP from scratch with GC only (the "pre-trained CLIP"), with the project's training loop;
3. fine-tunes it, with the same budget, under each configuration: GC only; GR only (CLIPSelf-like: a frozen copy of
   the pre-trained model is the teacher); GC+GR (FineCLIP-like, without region captions); GC+LRC; GC+LRC+GR; and
   HarmoCLIP as `TrainConfig`'s defaults make it; plus any ``--row`` given (a name and `TrainConfig` fields);
4. evaluates every model on the held-out split: retrieval R@1 both directions (global; captions are unique) and box
   Top-1 with dense region features, on the boxes of seen combinations and of held-out ones (region), plus the
   crop-and-encode baseline.

Each row of the table is the mean ± standard deviation over the seeds (sample sd); the per-seed figures are in the
JSON. Under ``--out`` (default ``outputs/harmony``): ``harmony.json`` (every figure, every setting, the command),
``harmony.md`` (the table), ``harmony.png`` (global against held-out region accuracy, with error bars) and
``harmony.log``.

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
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

from evaluation.evaluate import BOX_METHODS, DEFAULT_TEMPLATES  # noqa: E402
from plumbing.atomic_files import write_text_atomic  # noqa: E402
from plumbing.command_line import CommandParser, log_to_file, run_command, setup_logging  # noqa: E402
from training.config import TrainConfig, config_field_value  # noqa: E402
from training.data.synthetic import read_held_out  # noqa: E402

logger = logging.getLogger("harmoclip.harmony")

ROW_FILE = "row.json"  # written last in a row's folder: the row is finished
RESULTS_NAME = "harmony"


@dataclass(frozen=True)
class Configuration:
    """One row of the benchmark: a key for folders, a label for the table, and the `TrainConfig` fields it sets (loss
    weights first; anything else, e.g. the teacher, is an ablation). Fields not set keep the benchmark's values
    (`BASE_FIELDS`, then `HarmonySettings`), never `TrainConfig`'s defaults: only the HarmoCLIP row follows those."""

    key: str
    label: str
    fields: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        return self.fields.get(name, BASE_FIELDS.get(name, getattr(TrainConfig, name)))

    @property
    def losses(self) -> str:
        weights = (
            ("GC", "loss_gc_weight"),
            ("LRC", "loss_lrc_weight"),
            ("RLA", "loss_rla_weight"),
            ("GR", "loss_gr_weight"),
        )
        return "+".join(name for name, weight in weights if self.value(weight) > 0)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {name: float(self.value(f"loss_{name}_weight")) for name in ("gc", "lrc", "rla", "gr")}


def _weights(gc: float, lrc: float, gr: float, rla: float = 0.0) -> dict[str, float]:
    return {"loss_gc_weight": gc, "loss_lrc_weight": lrc, "loss_gr_weight": gr, "loss_rla_weight": rla}


# The settings of TrainConfig's defaults that make "HarmoCLIP": the loss weights and the region-side switches.
HARMOCLIP_FIELDS = (
    "loss_gc_weight",
    "loss_lrc_weight",
    "loss_rla_weight",
    "loss_gr_weight",
    "gr_teacher",
    "region_logit_scale_mode",
    "region_logit_scale_init",
    "region_pooling",
    "region_text_grad",
    "lrc_mask_categories",
)
# What a row starts from (GC+LRC+GR under a frozen teacher, the region temperature as loaded), whatever TrainConfig's
# defaults become: rows keep their meaning, and their finished runs stay reusable, when the defaults change.
BASE_FIELDS: dict[str, Any] = {
    **_weights(1.0, 1.0, 1.0, 0.0),
    "gr_teacher": "frozen",
    "region_logit_scale_init": None,
    "region_text_grad": True,
}
PRETRAINED = Configuration("pretrained", "pre-trained CLIP (reference)", _weights(1.0, 0.0, 0.0))
FINETUNE_CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("gc", "GC only", _weights(1.0, 0.0, 0.0)),
    Configuration("gr", "GR only (CLIPSelf-like)", {**_weights(0.0, 0.0, 1.0), "gr_teacher": "frozen"}),
    Configuration(
        "gc-gr", "GC+GR (FineCLIP-like, no region captions)", {**_weights(1.0, 0.0, 1.0), "gr_teacher": "frozen"}
    ),
    Configuration("gc-lrc", "GC+LRC", _weights(1.0, 1.0, 0.0)),
    Configuration("gc-lrc-gr", "GC+LRC+GR", {**_weights(1.0, 1.0, 1.0), "gr_teacher": "frozen"}),
    Configuration(
        "harmoclip", "HarmoCLIP (TrainConfig defaults)", {name: getattr(TrainConfig, name) for name in HARMOCLIP_FIELDS}
    ),
)
CONFIGURATION_KEYS = tuple(configuration.key for configuration in FINETUNE_CONFIGURATIONS)
# Fields a row may not set: they are the benchmark's (same data, same pre-trained model, same budget for every row).
_BENCHMARK_FIELDS = (
    "data_format",
    "synthetic_dir",
    "synthetic_num_train",
    "synthetic_num_val",
    "synthetic_image_size",
    "synthetic_min_shapes",
    "synthetic_held_out",
    "init_from",
    "model_preset",
    "image_size",
    "patch_size",
    "seed",
    "batch_size",
    "max_steps",
    "learning_rate",
    "warmup_steps",
    "output_dir",
)


def parse_row(text: str) -> Configuration:
    """``"key:field=value,field=value"`` -> an extra row (an ablation); values are read as the field's type."""
    key, _, assignments = text.partition(":")
    if not key or not key.replace("-", "").replace("_", "").isalnum() or key in CONFIGURATION_KEYS + (PRETRAINED.key,):
        raise ValueError(f"--row {text!r}: the key must be a new name of letters, digits, '-' or '_', got {key!r}")
    fields: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        name, equals, value = assignment.partition("=")
        name = name.strip()
        if not equals or name in _BENCHMARK_FIELDS:
            raise ValueError(
                f"--row {text!r}: {assignment!r} must be field=value with a field other than {list(_BENCHMARK_FIELDS)}"
            )
        fields[name] = config_field_value(name, value.strip())
    if not fields:
        raise ValueError(f"--row {text!r}: give at least one field=value after the key")
    return Configuration(key, f"{key} ({', '.join(f'{name}={value}' for name, value in fields.items())})", fields)


@dataclass
class HarmonySettings:
    """Everything the benchmark's figures depend on. The defaults run on 2 CPU cores in under 30 minutes."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # ---- data: the synthetic shapes (training/data/synthetic.py)
    synthetic_num_train: int = 2000
    synthetic_num_val: int = 200
    synthetic_image_size: int = 64
    synthetic_min_shapes: int = 2
    synthetic_held_out: int = 4
    # ---- model: a from-scratch preset of training/builders.py
    model_preset: str = "tiny"
    image_size: int = 64
    patch_size: int = 8
    # ---- pre-training (GC only, from scratch)
    pretrain_steps: int = 200
    pretrain_batch_size: int = 64
    pretrain_learning_rate: float = 5e-4
    pretrain_warmup_steps: int = 20
    # ---- fine-tuning (the same budget for every configuration)
    finetune_steps: int = 60
    finetune_batch_size: int = 32
    finetune_learning_rate: float = 1e-4
    finetune_warmup_steps: int = 6
    weight_decay: float = 0.1
    gr_crop_scale: float = 1.5
    # The frozen GR teacher's crop embeddings computed once per seed (training/cache_teacher.py): the same targets
    # as computing them at every step, for a fraction of the cost.
    cache_teacher: bool = True
    # ---- evaluation and rows
    eval_batch_size: int = 64
    configurations: tuple[str, ...] = CONFIGURATION_KEYS
    rows: tuple[str, ...] = ()  # extra rows, "key:field=value,...": see `parse_row`

    def __post_init__(self) -> None:
        self.configurations = tuple(self.configurations)
        self.rows = tuple(self.rows)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        unknown = [key for key in self.configurations if key not in CONFIGURATION_KEYS]
        if unknown or not (self.configurations or self.rows):
            raise ValueError(
                f"`configurations` must be a subset of {list(CONFIGURATION_KEYS)} (or give `rows`), got {list(self.configurations)}"
            )
        if len(set(self.configurations)) != len(self.configurations):
            raise ValueError(f"`configurations` lists a configuration twice: {list(self.configurations)}")
        extra = [parse_row(row).key for row in self.rows]
        if len(set(extra)) != len(extra):
            raise ValueError(f"`rows` uses a key twice: {extra}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct and at least one, got {list(self.seeds)}")
        for name in (
            "synthetic_num_train",
            "synthetic_num_val",
            "pretrain_steps",
            "pretrain_batch_size",
            "finetune_steps",
            "finetune_batch_size",
            "eval_batch_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}")
        for name in ("pretrain_batch_size", "finetune_batch_size"):
            if getattr(self, name) > self.synthetic_num_train:
                raise ValueError(
                    f"`{name}` ({getattr(self, name)}) exceeds `synthetic_num_train` ({self.synthetic_num_train})"
                )

    def finetune_configurations(self) -> list[Configuration]:
        return [c for c in FINETUNE_CONFIGURATIONS if c.key in self.configurations] + [
            parse_row(row) for row in self.rows
        ]

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(configurations=list(self.configurations), rows=list(self.rows), seeds=list(self.seeds))
        return values


# Small enough for a test: the whole pipeline in seconds (figures are meaningless at this size).
QUICK_SETTINGS: dict[str, Any] = dict(
    seeds=(0, 1),
    synthetic_num_train=8,
    synthetic_num_val=8,
    synthetic_image_size=32,
    model_preset="micro",
    image_size=32,
    pretrain_steps=2,
    pretrain_batch_size=4,
    pretrain_warmup_steps=1,
    finetune_steps=2,
    finetune_batch_size=4,
    finetune_warmup_steps=1,
    eval_batch_size=8,
)


# ---------------------------------------------------------------------------------------------------- training configs


def synthetic_folder(settings: HarmonySettings, out: Path, seed: int) -> Path:
    """The data set's folder, named by its settings (one folder per distinct data set)."""
    return out / (
        f"synthetic-{settings.synthetic_num_train}-{settings.synthetic_num_val}-{settings.synthetic_image_size}px-"
        f"min{settings.synthetic_min_shapes}-heldout{settings.synthetic_held_out}-seed{seed}"
    )


def _train_config(
    settings: HarmonySettings,
    out: Path,
    configuration: Configuration,
    stage: str,
    init_from: Path | None,
    output_dir: Path,
    seed: int,
    teacher_cache: Path | None = None,
) -> TrainConfig:
    steps = getattr(settings, f"{stage}_steps")
    values: dict[str, Any] = dict(
        data_format="synthetic",
        synthetic_dir=str(synthetic_folder(settings, out, seed)),
        synthetic_num_train=settings.synthetic_num_train,
        synthetic_num_val=settings.synthetic_num_val,
        synthetic_image_size=settings.synthetic_image_size,
        synthetic_min_shapes=settings.synthetic_min_shapes,
        synthetic_held_out=settings.synthetic_held_out,
        init_from=str(init_from) if init_from else None,
        model_preset=settings.model_preset,
        image_size=settings.image_size,
        patch_size=settings.patch_size,
        gr_crop_scale=settings.gr_crop_scale,
        **BASE_FIELDS,
        seed=seed,
        batch_size=getattr(settings, f"{stage}_batch_size"),
        max_steps=steps,
        learning_rate=getattr(settings, f"{stage}_learning_rate"),
        warmup_steps=getattr(settings, f"{stage}_warmup_steps"),
        weight_decay=settings.weight_decay,
        output_dir=str(output_dir),
        log_every=max(1, min(10, steps // 10)),
        checkpoint_every=max(1, steps // 2),
        keep_checkpoints=1,
        resume=True,
        evaluate_at_end=False,
        eval_batch_size=settings.eval_batch_size,
        report_to="none",
        extra={"harmony_row": configuration.key, "harmony_stage": stage},
    )
    values.update(configuration.fields)
    if teacher_cache is not None and values["gr_teacher"] == "frozen" and values["loss_gr_weight"] > 0:
        values.update(gr_teacher="cached", teacher_cache=str(teacher_cache))
    return TrainConfig(**values)


def teacher_cache_for(
    settings: HarmonySettings, out: Path, pretrained_model: Path, pretrain_fingerprint: str, seed: int
) -> Path:
    """The frozen teacher's crop embeddings of the seed's training boxes under its pre-trained model (built once)."""
    from training.cache_teacher import build_teacher_cache_folder
    from training.teacher import INDEX_FILE

    folder = out / "runs" / f"teacher-cache-{pretrain_fingerprint}"
    if not (folder / INDEX_FILE).is_file():
        config = _train_config(
            settings, out, FINETUNE_CONFIGURATIONS[0], "finetune", pretrained_model, out / "runs" / "pending", seed
        )
        build_teacher_cache_folder(config, folder, batch_size=settings.eval_batch_size, overwrite=True)
    return folder


# Fields that name places or control logging, not what the weights become (the BPE file is the shipped one).
_NOT_FINGERPRINTED = (
    "synthetic_dir",
    "output_dir",
    "init_from",
    "teacher_cache",
    "tokenizer_bpe",
    "resume",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "report_to",
    "evaluate_at_end",
    "num_workers",
    "extra",
)


# Options added after runs were made, with the value that trains as before they existed: at that value they are left
# out of the fingerprint, so finished runs stay reusable; any other value is a new recipe.
_ADDED_LATER: dict[str, Any] = {"region_text_grad": True}
_UNSET = object()


def fingerprint(config: TrainConfig, parent: str | None = None) -> str:
    """A short hash of what a row's model and figures depend on: its training settings, the fingerprint of the model
    it starts from (`parent`) and the evaluation protocol."""
    recipe = {
        key: value
        for key, value in config.to_dict().items()
        if key not in _NOT_FINGERPRINTED and _ADDED_LATER.get(key, _UNSET) != value
    }
    recipe.update(parent=parent, eval_methods=list(BOX_METHODS), eval_templates=list(DEFAULT_TEMPLATES))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------- figures

FIGURE_NAMES = (
    "i2t_R@1",
    "t2i_R@1",
    "mean_R@1",
    "box_top1_dense",
    "box_top1_dense_seen",
    "box_top1_dense_held_out",
    "box_top1_crop",
    "box_top1_crop_seen",
    "box_top1_crop_held_out",
)


def group_top1(per_class_top1: Sequence[float | None], counts: Sequence[int], members: Sequence[bool]) -> float | None:
    """Top-1 (%) over the boxes of the classes in a group, from per-class Top-1 (%) and per-class box counts: the
    box-weighted mean of the members' per-class figures (None if the group has no box)."""
    total = sum(count for count, member in zip(counts, members) if member)
    if total == 0:
        return None
    hits = sum((top1 or 0.0) * count for top1, count, member in zip(per_class_top1, counts, members) if member)
    return hits / total


def summarize(
    evaluation: dict[str, Any], class_counts: Sequence[int] | None = None, held_out: Sequence[bool] | None = None
) -> dict[str, float | None]:
    """The benchmark's figures (percent) from `evaluate_model`'s {task: results}; with the held-out split's box count
    per class and which classes were held out of training, box Top-1 on seen and on held-out combinations too."""
    retrieval, boxcls = evaluation["retrieval"], evaluation["boxcls"]
    figures: dict[str, float | None] = {
        "i2t_R@1": float(retrieval["i2t_R@1"]),
        "t2i_R@1": float(retrieval["t2i_R@1"]),
        "box_top1_dense": float(boxcls["dense"]["top1"]),
        "box_top1_crop": float(boxcls["crop"]["top1"]),
        "box_mean_class_top1_dense": float(boxcls["dense"]["mean_class_top1"]),
        "i2t_R@5": float(retrieval["i2t_R@5"]),
        "t2i_R@5": float(retrieval["t2i_R@5"]),
    }
    figures["mean_R@1"] = (figures["i2t_R@1"] + figures["t2i_R@1"]) / 2
    for method in ("dense", "crop"):
        for group, members in (
            ("seen", None if held_out is None else [not h for h in held_out]),
            ("held_out", held_out),
        ):
            figures[f"box_top1_{method}_{group}"] = (
                None
                if members is None or class_counts is None
                else group_top1(boxcls[method]["per_class_top1"], class_counts, members)
            )
    return figures


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None."""
    present = [float(value) for value in values if value is not None]
    if not present:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(present) / len(present)
    sd = math.sqrt(sum((value - mean) ** 2 for value in present) / (len(present) - 1)) if len(present) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(present)}


def aggregate_rows(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the same configuration's per-seed records: {figure: {mean, sd, n, per_seed: [...]}}."""
    first = per_seed[0]
    figures = {}
    for name in first["figures"]:
        values = [record["figures"].get(name) for record in per_seed]
        figures[name] = {**mean_sd(values), "per_seed": values}
    return {
        "key": first["key"],
        "label": first["label"],
        "losses": first["losses"],
        "loss_weights": first["loss_weights"],
        "fields": first["fields"],
        "seeds": [record["seed"] for record in per_seed],
        "figures": figures,
        "per_seed": list(per_seed),
    }


def paired_differences(rows: Sequence[dict[str, Any]], figure: str, reference_key: str) -> dict[str, dict[str, Any]]:
    """Per row: `figure` minus the reference row's, seed by seed, as {mean, sd, n, per_seed}. Seeds share the data and
    the pre-trained model, so the paired difference is far more precise than the difference of the two means (whose
    sd carries the seeds' spread). Empty when the reference row is absent."""
    reference = next((row for row in rows if row["key"] == reference_key), None)
    if reference is None:
        return {}
    by_seed = dict(zip(reference["seeds"], reference["figures"][figure]["per_seed"]))
    differences = {}
    for row in rows:
        values = [
            None if value is None or by_seed.get(seed) is None else value - by_seed[seed]
            for seed, value in zip(row["seeds"], row["figures"][figure]["per_seed"])
        ]
        differences[row["key"]] = {**mean_sd(values), "per_seed": values}
    return differences


GOAL_ROW, GLOBAL_REFERENCE, REGION_REFERENCES = "harmoclip", "gc", ("gr", "gc-gr")
GOAL_GLOBAL_TOLERANCE = 1.0  # points of mean R@1 HarmoCLIP may lose against GC-only fine-tuning


def goal_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Whether the TrainConfig defaults ("harmoclip") keep GC-only's global accuracy (mean R@1 within
    `GOAL_GLOBAL_TOLERANCE`) and reach the held-out region accuracy of the best region-only method (GR only, GC+GR),
    all as means over seeds. None when a row it needs was not run."""
    mean = {row["key"]: {name: figure["mean"] for name, figure in row["figures"].items()} for row in rows}
    region_key = "box_top1_dense_held_out"
    references = [key for key in REGION_REFERENCES if key in mean]
    if GOAL_ROW not in mean or GLOBAL_REFERENCE not in mean or not references or mean[GOAL_ROW][region_key] is None:
        return None
    best_region = max(references, key=lambda key: mean[key][region_key])
    global_gap = mean[GOAL_ROW]["mean_R@1"] - mean[GLOBAL_REFERENCE]["mean_R@1"]
    region_gap = mean[GOAL_ROW][region_key] - mean[best_region][region_key]
    global_met, region_met = global_gap >= -GOAL_GLOBAL_TOLERANCE, region_gap >= 0.0
    return {
        "global_gap": global_gap,
        "global_met": global_met,
        "region_reference": best_region,
        "region_gap": region_gap,
        "region_met": region_met,
        "met": global_met and region_met,
    }


def class_counts_and_held_out(data_dir: Path, class_names: Sequence[str]) -> tuple[list[int], list[bool]]:
    """Per class of `class_names` (the evaluation's order): the held-out split's box count, and whether the training
    split never saw the class."""
    held = set(read_held_out(data_dir))
    counts = {name: 0 for name in class_names}
    for line in (data_dir / "val.jsonl").read_text().splitlines():
        for region in json.loads(line)["regions"]:
            counts[region["label"]] += 1
    return [counts[name] for name in class_names], [name in held for name in class_names]


def evaluated_class_names(folder: Path) -> list[str]:
    """The classes of a row's box classification, in the order of its per-class figures."""
    return json.loads((folder / "eval.json").read_text())["tasks"]["boxcls"]["settings"]["class_names"]


# ---------------------------------------------------------------------------------------------------- rows


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


def run_row(
    configuration: Configuration, config: TrainConfig, row_fingerprint: str, show_progress: bool = True
) -> dict[str, Any]:
    """Trains (or resumes) and evaluates one row of one seed, or reuses it when finished. Returns the row's record."""
    from modeling_harmoclip import HarmoCLIPModel
    from training.builders import evaluate_model, load_processor
    from training.train import train

    folder = Path(config.output_dir)
    record = read_finished_row(folder, row_fingerprint)
    if record is not None:
        logger.info("%s, seed %d: reusing the finished row in %s", configuration.label, config.seed, folder)
        # The places as seen from here: the record keeps those of the run that made it (another `--out` spelling or
        # working directory), which the report would otherwise follow.
        model = folder / Path(record["model"]).relative_to(record["folder"])
        return {**record, "folder": str(folder), "model": str(model), "reused": True}
    logger.info(
        "%s, seed %d: training in %s (losses %s, %d steps)",
        configuration.label,
        config.seed,
        folder,
        configuration.losses,
        config.max_steps,
    )
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
    counts, held_out = class_counts_and_held_out(Path(config.synthetic_dir), evaluated_class_names(folder))
    record = {
        "key": configuration.key,
        "label": configuration.label,
        "losses": configuration.losses,
        "loss_weights": configuration.loss_weights,
        "fields": configuration.fields,
        "seed": config.seed,
        "fingerprint": row_fingerprint,
        "folder": str(folder),
        "model": str(model_dir),
        "init_from": config.init_from,
        "figures": summarize(evaluation, counts, held_out),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": eval_seconds,
        "train_config": config.to_dict(),
    }
    write_text_atomic(folder / ROW_FILE, json.dumps(record, indent=2) + "\n")
    logger.info(
        "%s, seed %d: %s (train %.0f s, eval %.0f s)",
        configuration.label,
        config.seed,
        json.dumps(record["figures"]),
        train_seconds,
        eval_seconds,
    )
    return {**record, "reused": False}


# ---------------------------------------------------------------------------------------------------- outputs


def _format(figure: dict[str, Any], signed: bool = False) -> str:
    if figure["mean"] is None:
        return "-"
    mean = f"{figure['mean']:+.1f}" if signed else f"{figure['mean']:.1f}"
    return f"{mean} ± {figure['sd']:.1f}" if figure["n"] > 1 else mean


TABLE_COLUMNS = (
    ("I2T R@1", "i2t_R@1"),
    ("T2I R@1", "t2i_R@1"),
    ("mean R@1 (global)", "mean_R@1"),
    ("box Top-1 dense, seen", "box_top1_dense_seen"),
    ("box Top-1 dense, held-out (region)", "box_top1_dense_held_out"),
    ("box Top-1 dense, all", "box_top1_dense"),
    ("box Top-1 crop, all", "box_top1_crop"),
)


def markdown_table(report: dict[str, Any]) -> str:
    """The table of every row (mean ± sd over seeds), chance levels, the protocol and the command."""
    settings = report["settings"]
    paired = report.get("paired_mean_R@1_vs_gc") or {}
    lines = [
        "| configuration | losses | "
        + " | ".join(name for name, _ in TABLE_COLUMNS)
        + (" | Δ mean R@1 vs GC only, paired" if paired else "")
        + " |",
        "|---|---|" + "---|" * (len(TABLE_COLUMNS) + bool(paired)),
    ]
    for row in report["rows"]:
        cells = [row["label"], row["losses"]] + [_format(row["figures"][key]) for _, key in TABLE_COLUMNS]
        if paired:
            cells.append(_format(paired[row["key"]], signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    chance, environment = report["chance"], report["environment"]
    seeds = settings["seeds"]
    lines += [
        "",
        f"Mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}: data, initialisation "
        f"and sampling). Held-out split per seed: {settings['synthetic_num_val']} images with unique captions "
        f"(about {chance['num_boxes']} boxes, {chance['num_classes']} classes; {settings['synthetic_held_out']} colour-shape "
        f"combinations never in a training image or caption, about {chance['num_held_out_boxes']} of the boxes). "
        f"Chance: R@1 {chance['R@1']:.1f}, box Top-1 {chance['box_top1']:.1f}. Figures in percent. "
        f"Every fine-tuned row starts from the same pre-trained model of its seed ({settings['pretrain_steps']} steps of "
        f"GC from scratch) with the same budget: {settings['finetune_steps']} steps of batch {settings['finetune_batch_size']} "
        f"at learning rate {settings['finetune_learning_rate']:g}."
        + (
            " The paired column is each row's mean R@1 minus GC only's, seed by seed (mean ± sd of those differences):"
            " the seeds' shared spread cancels there."
            if paired
            else ""
        ),
        "",
        *goal_lines(report.get("goal"), report["rows"]),
        f"Wall-clock time of this run: {report['wall_seconds'] / 60:.1f} min ({report['rows_reused']} of "
        f"{report['rows_run']} seed-row(s) reused) on {environment['device']} with {environment['torch_threads']} threads; "
        f"1-minute load average {environment['load_average_at_start'][0]:.1f} at the start, "
        f"{environment['load_average_at_end'][0]:.1f} at the end.",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def goal_lines(goal: dict[str, Any] | None, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The markdown sentence that says whether the TrainConfig defaults met the benchmark's goal (`goal_verdict`)."""
    if goal is None:
        return []
    labels = {row["key"]: row["label"] for row in rows}
    verdict = "met" if goal["met"] else "not met"
    return [
        f"Goal ({labels[GOAL_ROW]} within {GOAL_GLOBAL_TOLERANCE:g} point of GC only's mean R@1, and at least the "
        f"held-out box Top-1 of the best region-only row): **{verdict}**. Mean R@1 {goal['global_gap']:+.1f} against "
        f"GC only ({'met' if goal['global_met'] else 'not met'}); held-out box Top-1 {goal['region_gap']:+.1f} against "
        f"{labels[goal['region_reference']]} ({'met' if goal['region_met'] else 'not met'}).",
        "",
    ]


LEGEND_LABEL_LIMIT = 48  # longer labels (ablation rows list their fields) are shown by key: the table has the fields


def plot_harmony(rows: Sequence[dict[str, Any]], path: Path, chance: dict[str, float] | None = None) -> Path:
    """Global accuracy (mean retrieval R@1) against region accuracy on held-out combinations (box Top-1, dense; all
    boxes when nothing was held out), one labelled point per row with ± sd error bars over seeds; the pre-trained
    reference is a star. Written as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
    region_key = (
        "box_top1_dense_held_out"
        if all(row["figures"]["box_top1_dense_held_out"]["mean"] is not None for row in rows)
        else "box_top1_dense"
    )
    for index, row in enumerate(rows):
        x, y = row["figures"][region_key], row["figures"]["mean_R@1"]
        reference = row["key"] == PRETRAINED.key
        axis.errorbar(
            [x["mean"]],
            [y["mean"]],
            xerr=[x["sd"]],
            yerr=[y["sd"]],
            fmt="*" if reference else markers[index % len(markers)],
            markersize=14 if reference else 8,
            color="black" if reference else f"C{index}",
            ecolor="grey",
            elinewidth=1,
            capsize=3,
            zorder=3,
            label=row["label"] if len(row["label"]) <= LEGEND_LABEL_LIMIT else f"{row['key']} ({row['losses']})",
            alpha=0.85,
        )
        # Alternate above / below: neighbouring rows often land close together.
        axis.annotate(
            "pre-trained" if reference else row["key"],
            (x["mean"], y["mean"]),
            textcoords="offset points",
            xytext=(7, 5 if index % 2 == 0 else -12),
            fontsize=8,
        )
    if chance:
        axis.axhline(chance["R@1"], color="grey", linestyle=":", linewidth=1, label="chance")
        axis.axvline(chance["box_top1"], color="grey", linestyle=":", linewidth=1)
    axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    axis.set_xlabel(
        "region: box Top-1, dense features, "
        + ("held-out combinations (%)" if region_key.endswith("held_out") else "all boxes (%)")
    )
    axis.set_ylabel("global: mean retrieval R@1, I2T and T2I (%)")
    axis.set_title("Harmony benchmark (synthetic shapes, held-out split; mean ± sd over seeds)")
    axis.grid(alpha=0.3)
    axis.margins(0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(figure)
    os.replace(temporary, path)
    return path


def chance_levels(pretrained_folders: Sequence[Path], data_dirs: Sequence[Path]) -> dict[str, Any]:
    """Chance R@1 (one correct image among N) and box Top-1 (1 / classes), from the reference rows' evaluations (box
    counts averaged over seeds)."""
    tasks = [json.loads((folder / "eval.json").read_text())["tasks"] for folder in pretrained_folders]
    num_images = tasks[0]["retrieval"]["results"]["num_images"]
    num_classes = len(tasks[0]["boxcls"]["settings"]["class_names"])
    held_out_boxes = [
        sum(count for count, held in zip(*class_counts_and_held_out(data_dir, evaluated_class_names(folder))) if held)
        for folder, data_dir in zip(pretrained_folders, data_dirs)
    ]
    return {
        "R@1": 100.0 / num_images,
        "box_top1": 100.0 / num_classes,
        "num_classes": num_classes,
        "num_boxes": round(sum(task["boxcls"]["results"]["num_boxes"] for task in tasks) / len(tasks)),
        "num_held_out_boxes": round(sum(held_out_boxes) / len(held_out_boxes)),
    }


# ---------------------------------------------------------------------------------------------------- the benchmark


def run_benchmark(
    settings: HarmonySettings, out: str | Path = "outputs/harmony", command: str = "", show_progress: bool = True
) -> dict[str, Any]:
    """For each seed: pre-trains, fine-tunes every configuration, evaluates; aggregates over seeds; writes
    harmony.{json,md,png}; returns the report."""
    out = Path(out)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    runs = out / "runs"
    configurations = settings.finetune_configurations()
    progress = tqdm(
        total=len(settings.seeds) * (1 + len(configurations)),
        desc="harmony rows",
        unit="row",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    records: dict[str, list[dict[str, Any]]] = {PRETRAINED.key: [], **{c.key: [] for c in configurations}}
    for seed in settings.seeds:
        pretrain = _train_config(settings, out, PRETRAINED, "pretrain", None, runs / "pending", seed)
        pretrain_fingerprint = fingerprint(pretrain)
        pretrain = dataclasses.replace(pretrain, output_dir=str(runs / f"{PRETRAINED.key}-{pretrain_fingerprint}"))
        pretrained = run_row(PRETRAINED, pretrain, pretrain_fingerprint, show_progress)
        records[PRETRAINED.key].append(pretrained)
        progress.update(1)
        cache = None
        if settings.cache_teacher and any(
            c.value("loss_gr_weight") > 0 and c.value("gr_teacher") == "frozen" for c in configurations
        ):
            cache = teacher_cache_for(settings, out, Path(pretrained["model"]), pretrain_fingerprint, seed)
        done: dict[
            str, dict[str, Any]
        ] = {}  # fingerprint -> record: a row equal to an earlier one is not trained twice
        for configuration in configurations:
            config = _train_config(
                settings, out, configuration, "finetune", Path(pretrained["model"]), runs / "pending", seed, cache
            )
            row_fingerprint = fingerprint(config, parent=pretrain_fingerprint)
            if row_fingerprint in done:
                logger.info(
                    "%s, seed %d: the same training as %s, figures shared",
                    configuration.label,
                    seed,
                    done[row_fingerprint]["label"],
                )
                record = {
                    **done[row_fingerprint],
                    "key": configuration.key,
                    "label": configuration.label,
                    "same_as": done[row_fingerprint]["key"],
                }
            else:
                folder = runs / f"{configuration.key}-{row_fingerprint}"
                if not folder.exists():  # the same training finished earlier under another row's name
                    folder = next(
                        (f for f in sorted(runs.glob(f"*-{row_fingerprint}")) if read_finished_row(f, row_fingerprint)),
                        folder,
                    )
                config = dataclasses.replace(config, output_dir=str(folder))
                record = run_row(configuration, config, row_fingerprint, show_progress)
                record = done[row_fingerprint] = {**record, "key": configuration.key, "label": configuration.label}
            records[configuration.key].append(record)
            progress.update(1)
    progress.close()
    every = [record for per_seed in records.values() for record in per_seed]
    rows = [aggregate_rows(per_seed) for per_seed in records.values()]
    report = {
        "benchmark": "harmony",
        "settings": settings.to_dict(),
        "command": command,
        "working_directory": os.getcwd(),
        "rows": rows,
        "paired_mean_R@1_vs_gc": paired_differences(rows, "mean_R@1", GLOBAL_REFERENCE),
        "goal": goal_verdict(rows),
        "chance": chance_levels(
            [Path(record["folder"]) for record in records[PRETRAINED.key]],
            [synthetic_folder(settings, out, seed) for seed in settings.seeds],
        ),
        "wall_seconds": time.perf_counter() - started,
        "rows_run": len(every),
        "rows_reused": sum(record["reused"] for record in every),
        "train_and_eval_seconds_of_rows": sum(record["train_seconds"] + record["eval_seconds"] for record in every),
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
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": [round(value, 2) for value in load_at_start],
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------------------- command line


def build_parser() -> CommandParser:
    parser = CommandParser(prog="python -m benchmarks.harmony", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/harmony", help="results folder (default: outputs/harmony)")
    parser.add_argument("--config", default=None, help="YAML file of settings (the fields of HarmonySettings)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny data and a few steps: checks the pipeline in seconds"
    )
    for item in dataclasses.fields(HarmonySettings):
        flags = [f"--{item.name.replace('_', '-')}", f"--{item.name}"]
        if item.name == "configurations":
            parser.add_argument(
                *flags,
                dest=item.name,
                nargs="*",
                choices=CONFIGURATION_KEYS,
                default=None,
                help=f"fine-tuning rows (default: all of {' '.join(CONFIGURATION_KEYS)})",
            )
        elif item.name == "seeds":
            parser.add_argument(
                *flags, dest=item.name, nargs="+", type=int, default=None, help=f"default: {list(item.default)}"
            )
        elif item.name == "rows":
            parser.add_argument(
                "--row",
                dest="rows",
                action="append",
                default=None,
                metavar="KEY:FIELD=VALUE,...",
                help="an extra row (ablation): a new key and TrainConfig fields, e.g. "
                "'lrc-half:loss_lrc_weight=0.5'; repeatable",
            )
        else:
            parser.add_argument(
                *flags, dest=item.name, type=type(item.default), default=None, help=f"default: {item.default!r}"
            )
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
