"""Training configuration: one flat dataclass, read from a YAML file and overridden from the command line.

Every field is also a command-line option (`--learning_rate 1e-5` or `--learning-rate 1e-5`), so
`python training/train.py --config configs/synthetic_tiny.yaml --max_steps 50` runs the shipped config with one
change. Unknown keys in the YAML file and bad values are errors that name the key and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeling_harmoclip.configuration_harmoclip import (
    DEFAULT_RECIPE,
    LEXEME_ALIASES,
    LEXEME_MODES,
    RECIPE_CHOICES,
    RECIPE_FIELDS,
    RECIPES,
    TEACHER_ALIASES,
    TEACHER_MODES,
    check_recipe,
    gr_enabled,
    recipe_defaults,
    recipe_fields,
    recipe_overrides,
)
from plumbing.command_line import CommandParser
from plumbing.typed_values import coerce_value
from training.data.object_views import check_object_view_options
from training.data.synthetic import VOCABULARIES
from training.options import add_dataclass_options, dataclass_values, read_settings_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_FORMATS = ("synthetic", "jsonl", "coco", "flickr30k", "hf")
MIXED_PRECISION = ("no", "bf16", "fp16")
MODEL_PRESETS = ("micro", "tiny", "vit-b-16")
# The trackers Accelerate can log to (its `LoggerType`), plus "none"; "all" takes every installed one.
TRACKERS = ("all", "aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "tensorboard", "trackio", "wandb")
# Options with a fixed set of values (also the `choices` of their command-line options).
CHOICES: dict[str, tuple[str, ...]] = {
    "data_format": DATA_FORMATS,
    "mixed_precision": MIXED_PRECISION,
    "model_preset": MODEL_PRESETS,
    **RECIPE_CHOICES,
    "gr_teacher": TEACHER_MODES + tuple(TEACHER_ALIASES),  # an older name is read, then mapped
    "lexeme_mode": LEXEME_MODES + tuple(LEXEME_ALIASES),  # likewise, with a FutureWarning
    "flickr_category": ("type", "chain"),
    "synthetic_vocabulary": tuple(VOCABULARIES),
}

# Options that were renamed: a config file that still uses the old name is told the new one.
RENAMED = {
    "region_logit_scale_init": "region_logit_scale_init_value",  # the one knob, shared with the model config
    "region_mode": "processor_region_mode",
}

# The training recipe's fields (loss weights, region settings, teacher), taken from the model config with its
# defaults (`RECIPE_FIELDS`): the recipe is stated once, and `harmoclip_settings` passes it back to the model.
RecipeSettings = dataclasses.make_dataclass(
    "RecipeSettings",
    [(name, type(default), field(default=default)) for name, default in recipe_defaults().items()],
)
RecipeSettings.__doc__ = "The fields of `RECIPE_FIELDS` with `HarmoCLIPConfig`'s defaults (the shipped recipe)."


@dataclass
class TrainConfig(RecipeSettings):
    """Everything a training run reads: the recipe (`RecipeSettings`, from the model config) and the fields below.

    `recipe` names the recipe (`RECIPES` of the model config) the recipe fields start from: `load_config` applies it
    under the fields stated beside it (a settings file's `recipe: clipself` with `loss_gc_weight: 0.5`, or
    `--recipe clipself --loss_gc_weight 0.5`). The defaults are the `harmoclip` recipe's."""

    recipe: str | None = DEFAULT_RECIPE  # a name of RECIPES (None: no named recipe); recorded in the model's config

    # ---- data
    data_format: str = "synthetic"
    train_data: str | None = (
        None  # jsonl: manifest; coco: folder or captions json; flickr30k: dataset root; hf: see below
    )
    val_data: str | None = None
    coco_instances: str | None = None  # coco: instances_*.json (default: beside the captions file)
    image_root: str | None = None  # coco / flickr30k: folder of the images
    val_image_root: str | None = None  # coco: folder of the held-out images (default: image_root)
    synthetic_dir: str = "outputs/synthetic"
    synthetic_num_train: int = 512
    synthetic_num_val: int = 128
    synthetic_image_size: int = 64
    synthetic_min_shapes: int = 1
    synthetic_held_out: int = 0  # colour-shape combinations kept out of the training split (open-vocabulary test)
    synthetic_vocabulary: str = "basic"  # colours x shapes: "basic" 5 x 4, "rich" 9 x 7 (training/data/synthetic.py)
    # hf: a `save_to_disk` folder, or a folder / glob of Parquet files or WebDataset tars (training/data/data_hf.py)
    streaming: bool = False  # hf: read as a stream, each process its own shards (training/data/streaming.py)
    shuffle_buffer: int = 0  # hf streaming: rows in the shuffle buffer (0: shard order only; resumes exactly)
    hf_columns: dict[str, str] | None = None  # hf: schema field -> column, e.g. {image: jpg, caption: text} (YAML only)
    flickr_category: str = "type"  # flickr30k: a box's category for LRC's false negatives, entity "type" or "chain"
    max_boxes: int = 20
    min_box_size: float = 4.0
    strict: bool = False
    num_workers: int = 0
    # Object-centric views (training/data/object_views.py): this fraction of the training samples becomes the crop of one
    # of its phrase-linked boxes (enlarged `object_view_scale` times), captioned with the box's phrase alone.
    object_views: float = 0.0
    object_view_scale: float = 1.5
    # ---- model
    init_from: str | None = None  # a HarmoCLIP or CLIP folder (conversion/convert_clip.py makes one)
    model_preset: str = "tiny"  # from scratch: "tiny" (CPU minutes), "vit-b-16", or "micro" (smoke runs)
    image_size: int = 64
    patch_size: int = 8
    tokenizer_bpe: str = str(PROJECT_ROOT / "assets" / "bpe_simple_vocab_16e6.txt.gz")  # shipped with the project
    tokenizer_num_merges: int | None = 2000  # from scratch: a small vocabulary from OpenAI's first merges
    processor_region_mode: bool = True  # the processor's geometry: square resize without crop (what region tasks want)
    teacher_cache: str | None = None  # with gr_teacher "cached": the folder written by training/cache_teacher.py
    # ---- optimisation
    seed: int = 0
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 300  # optimiser steps
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    warmup_steps: int = 20
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    lock_text: bool = False
    lock_vision_layers: int = 0  # freeze the patch embedding and the first k vision layers
    gradient_checkpointing: bool = False  # recompute each tower layer in the backward pass: less memory, more time
    max_logit_scale: float = 100.0
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before the run stops
    # ---- outputs
    output_dir: str = "outputs/run"
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    evaluate_at_end: bool = True
    eval_retrieval_data: str | None = None  # Karpathy split json or JSONL (default: the held-out manifest, if JSONL)
    eval_boxcls_data: str | None = None  # COCO instances/panoptic json or JSONL with labels (default: likewise)
    eval_image_root: str | None = None
    eval_batch_size: int = 64
    # Box-classification prompts, each with '{}' for the class name; empty: the ImageNet-style ensemble
    # (DEFAULT_TEMPLATES). A model pre-trained from scratch knows only its captions' language and is asked in it
    # (configs/toy_clip_pretrain.yaml: the bare phrase, as its object-centric views are captioned).
    eval_templates: tuple[str, ...] = ()
    report_to: str = "tensorboard"  # comma-separated trackers (TRACKERS: tensorboard, wandb, mlflow, ...), or "none"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes copied into the run's config.json

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        hints = _field_types()
        for item in dataclasses.fields(self):  # types first: a YAML file or a caller may pass anything
            setattr(self, item.name, coerce_value(item.name, getattr(self, item.name), hints[item.name]))
        for index, template in enumerate(self.eval_templates):
            if "{}" not in template:
                raise ValueError(
                    f"config `eval_templates`[{index}] must contain '{{}}' where the class name goes, got {template!r}"
                )
        self.gr_teacher = TEACHER_ALIASES.get(self.gr_teacher, self.gr_teacher)
        if self.lexeme_mode in LEXEME_ALIASES:
            warnings.warn(
                f"config `lexeme_mode: {self.lexeme_mode}` is now spelled {LEXEME_ALIASES[self.lexeme_mode]!r}; the "
                "old name is read for one more release",
                FutureWarning,
                stacklevel=2,
            )
            self.lexeme_mode = LEXEME_ALIASES[self.lexeme_mode]
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"config `recipe` must be one of {list(RECIPES)}, got {self.recipe!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config `{name}` must be one of {allowed}, got {getattr(self, name)!r}")
        check_recipe(self, "config `{}`")
        tracker_names(self.report_to)
        self._check_ranges()
        self._check_data_options()
        if self.region_logit_scale_mode == "separate" and self.region_logit_scale_init_value > math.log(
            self.max_logit_scale
        ):
            raise ValueError(
                f"config `region_logit_scale_init_value` must be at most log(max_logit_scale) = "
                f"{math.log(self.max_logit_scale):.4f}, got {self.region_logit_scale_init_value!r}"
            )
        if self.loss_gc_weight == self.loss_lrc_weight == self.loss_gr_weight == self.loss_rla_weight == 0:
            raise ValueError("config: all loss weights are 0; nothing to train")

    def _check_ranges(self) -> None:
        """Counts, sizes and rates in their ranges: a clear error naming the field."""
        positive = (
            "batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "max_boxes",
            "image_size",
            "patch_size",
            "max_nonfinite_steps",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config `{name}` must be > 0, got {getattr(self, name)!r}")
        for name in (
            "weight_decay",
            "warmup_steps",
            "lock_vision_layers",
            "num_workers",
            "min_box_size",
            "shuffle_buffer",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"config `{name}` must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"config `learning_rate` must be > 0, got {self.learning_rate!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"config `image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})"
            )

    def _check_data_options(self) -> None:
        """The data options agree with `data_format`, `streaming` and the GR teacher."""
        if self.data_format != "synthetic" and not self.train_data:
            raise ValueError(f"config `train_data` is required with data_format={self.data_format!r}")
        if self.data_format == "synthetic" and (self.train_data or self.val_data):
            given = "train_data" if self.train_data else "val_data"
            raise ValueError(
                f"config `{given}` ({getattr(self, given)!r}) is not read with data_format='synthetic': "
                f"set `data_format` to one of {DATA_FORMATS[1:]}"
            )
        if self.hf_columns is not None and not (
            isinstance(self.hf_columns, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.hf_columns.items())
        ):
            raise ValueError(f"config `hf_columns` must map field names to column names, got {self.hf_columns!r}")
        check_object_view_options(self.object_views, self.object_view_scale)
        if self.object_views > 0 and self.streaming:
            raise ValueError("config `object_views` needs a map-style data set: it does not apply with `streaming`")
        if self.object_views > 0 and self.gr_enabled and self.gr_teacher == "cached":
            raise ValueError(
                "config `object_views` does not apply with gr_teacher='cached': the cache holds no views' crops"
            )
        if self.streaming and self.data_format != "hf":
            raise ValueError(f"config `streaming` needs data_format='hf', got data_format={self.data_format!r}")
        if self.gr_enabled and self.gr_teacher == "cached" and not self.teacher_cache:
            raise ValueError(
                "config `teacher_cache` is required with gr_teacher='cached' (see training/cache_teacher.py)"
            )

    @property
    def trackers(self) -> list[str]:
        """The trackers of `report_to` (empty for "none")."""
        return tracker_names(self.report_to)

    @property
    def gr_enabled(self) -> bool:
        """Whether GR is on: the model config's one rule (`configuration_harmoclip.gr_enabled`)."""
        return gr_enabled(self)

    @property
    def uses_phrases(self) -> bool:
        """Whether a batch needs its phrases (LRC or RLA is on)."""
        return self.loss_lrc_weight > 0 or self.loss_rla_weight > 0

    @property
    def uses_regions(self) -> bool:
        """Whether a batch needs its boxes (a region term is on)."""
        return self.uses_phrases or self.gr_enabled

    @property
    def recipe_settings(self) -> dict[str, Any]:
        """{field: value} of the recipe fields (`RECIPE_FIELDS`) and the recipe's name (`recipe_name`): what the model
        config is given."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS} | {"recipe_name": self.recipe}

    @property
    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe fields that differ from the named recipe's (given explicitly over it)."""
        return recipe_overrides(self.recipe, self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def tracker_names(report_to: str) -> list[str]:
    """The trackers named by `report_to` ("tensorboard,wandb"; "none": no tracker), each one Accelerate supports."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names == ["none"]:
        return []
    if not names or any(name not in TRACKERS for name in names):
        raise ValueError(f"config `report_to` must name trackers among {TRACKERS} or be 'none', got {report_to!r}")
    return names


def config_field_value(name: str, text: str) -> Any:
    """A command-line string read as the type of `TrainConfig` field `name` (an unknown name is an error)."""
    hints = _field_types()
    if name not in hints or name == "extra":
        raise ValueError(f"unknown option {name!r}")
    return coerce_value(name, text, hints[name], where=f"option `{name}`")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Reads a YAML file (if given), applies overrides (already typed values), validates.

    Layers, each over the one before: the defaults (the `harmoclip` recipe), the file's `recipe`, the file's other
    fields, the overrides' `recipe`, the other overrides. A named recipe sets its fields (`RECIPES`); a field stated
    in the same layer or a later one wins over it."""
    values: dict[str, Any] = {}
    known = {item.name for item in dataclasses.fields(TrainConfig)}
    layers = [read_settings_file(path, known, renamed=RENAMED)] if path is not None else []
    layers.append(dict(overrides or {}))
    for layer in layers:
        for key in layer:
            if key not in known:
                raise ValueError(f"unknown option {key!r}")
        if layer.get("recipe") is not None:
            values.update(recipe_fields(layer["recipe"]))
        values.update(layer)
    return TrainConfig(**values)


def build_argument_parser(description: str) -> CommandParser:
    """`--config PATH` plus one option per config field (underscores or dashes, `training.options`); values stay
    strings until `config_from_args` reads them as their field's type."""
    parser = CommandParser(description=description)
    parser.add_argument("--config", help="YAML file of options (configs/*.yaml); command-line options override it")
    add_dataclass_options(parser, TrainConfig, skip=("extra",), choices=CHOICES)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of `--config` with the options given on the command line (typed and checked by `TrainConfig`)."""
    overrides = dataclass_values(TrainConfig, {k: v for k, v in vars(args).items() if k != "extra"})
    return load_config(args.config, overrides)
