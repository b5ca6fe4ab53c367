"""Rows and settings of the harmony benchmark: what each row trains, and everything the figures depend on.

The row fields (`RECIPE_FIELDS`) and the rule that says whether a row trains GR (`gr_enabled`) are the model config's
(`modeling_harmoclip.configuration_harmoclip`), reached from here and nowhere else in the package.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeling_harmoclip.configuration_harmoclip import RECIPE_FIELDS, RECIPES, recipe_fields
from modeling_harmoclip.configuration_harmoclip import gr_enabled as recipe_gr_enabled
from training.config import TrainConfig, config_field_value
from training.data.synthetic import VOCABULARIES

PRETRAIN_RECIPE = "configs/toy_clip_pretrain.yaml"  # the toy CLIP every row starts from (docs/toy_clip.md)

# A row's fields are the recipe's (`RECIPE_FIELDS`, stated once in the model config).
LOSS_NAMES = ("gc", "lrc", "rla", "gr", "gd")


def gr_enabled(values: Mapping[str, Any]) -> bool:
    """Whether a row with these `TrainConfig` field values trains the GR term: the project's one rule
    (`configuration_harmoclip.gr_enabled`), read from a mapping."""
    return recipe_gr_enabled(types.SimpleNamespace(**values))


def uses_frozen_teacher(values: Mapping[str, Any]) -> bool:
    """Whether GR's teacher is a frozen copy of the starting model (its crop embeddings can then be cached)."""
    return gr_enabled(values) and values["gr_teacher"] == "frozen"


def loss_names(values: Mapping[str, Any]) -> str:
    """ "GC+RLA+GR": the terms these field values train."""
    on = {name: values.get(f"loss_{name}_weight", 0.0) > 0 for name in LOSS_NAMES}  # GD: 0 in runs made before it
    on["gr"] = gr_enabled(values)
    return "+".join(name.upper() for name in LOSS_NAMES if on[name])


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

    def values(self) -> dict[str, Any]:
        """The row's value of every recipe field."""
        return {name: self.value(name) for name in RECIPE_FIELDS}

    @property
    def losses(self) -> str:
        return loss_names(self.values())

    @property
    def loss_weights(self) -> dict[str, float]:
        return {name: float(self.value(f"loss_{name}_weight")) for name in LOSS_NAMES}


def _weights(gc: float, lrc: float, gr: float, rla: float = 0.0) -> dict[str, float]:
    return {"loss_gc_weight": gc, "loss_lrc_weight": lrc, "loss_gr_weight": gr, "loss_rla_weight": rla}


# What a row starts from (GC+LRC+GR under a frozen teacher, the region temperature as loaded), whatever TrainConfig's
# defaults become: rows keep their meaning, and their finished runs stay reusable, when the defaults change.
BASE_FIELDS: dict[str, Any] = {
    **_weights(1.0, 1.0, 1.0, 0.0),
    "gr_teacher": "frozen",
    "region_text_grad": True,
}
NO_TEXT: dict[str, Any] = {"region_text_grad": False}
PRETRAINED = Configuration("pretrained", "pre-trained toy CLIP (reference)", _weights(1.0, 0.0, 0.0))
# The `harmoclip` row's fields, which every candidate of the harmony rule changes in one place.
HARMOCLIP_FIELDS: dict[str, Any] = {name: getattr(TrainConfig, name) for name in RECIPE_FIELDS}
GC_ONLY = Configuration("gc", "GC only", _weights(1.0, 0.0, 0.0))
FINETUNE_CONFIGURATIONS: tuple[Configuration, ...] = (
    GC_ONLY,
    Configuration("gr", "GR only (CLIPSelf-like)", _weights(0.0, 0.0, 1.0)),
    Configuration("gc-gr", "GC+GR (FineCLIP-like, no region captions)", _weights(1.0, 0.0, 1.0)),
    Configuration("gc-lrc", "GC+LRC", _weights(1.0, 1.0, 0.0)),
    Configuration("gc-lrc-gr", "GC+LRC+GR (the paper's three terms)", _weights(1.0, 1.0, 1.0)),
    # The steps the previous defaults (GC+RLA 0.5+GR, text gradients off) came from: LRC replaced by RLA at 0.5, then the
    # region terms' text gradients off.
    Configuration("gc-rla-gr", "GC+RLA 0.5+GR, region text gradients on", _weights(1.0, 0.0, 1.0, 0.5)),
    Configuration(
        "gc-rla",
        "GC+RLA 0.5, no region text gradients",
        {**_weights(1.0, 0.0, 0.0, 0.5), "region_text_grad": False},
    ),
    # The rows the `harmoclip` recipe's free choices are chosen from (`recipe_rule`): the paper's phrase-region term
    # without the region terms' text-tower gradients (the one choice the evidence above settles), at three weights.
    Configuration("gc-lrc-notext", "GC+LRC, no region text gradients", {**_weights(1.0, 1.0, 0.0), **NO_TEXT}),
    Configuration("gc-lrc-gr-notext", "GC+LRC+GR, no region text gradients", {**_weights(1.0, 1.0, 1.0), **NO_TEXT}),
    Configuration(
        "gc-lrc-half-gr-notext", "GC+LRC 0.5+GR, no region text gradients", {**_weights(1.0, 0.5, 1.0), **NO_TEXT}
    ),
    Configuration(
        "gc-lrc-quarter-gr-notext",
        "GC+LRC 0.25+GR, no region text gradients",
        {**_weights(1.0, 0.25, 1.0), **NO_TEXT},
    ),
    # FineCLIP's terms as the `fineclip` recipe has them (its live teacher cannot be cached: the costliest row).
    Configuration("fineclip", "FineCLIP (the `fineclip` recipe)", recipe_fields("fineclip")),
    Configuration("harmoclip", "HarmoCLIP (the `harmoclip` recipe, TrainConfig's defaults)", HARMOCLIP_FIELDS),
    # The candidates for a harmonious recipe (docs/harmony_candidates.md says why each, with its source), each
    # `harmoclip` with one change; the rule that judges them is `statistics.harmony_rule`.
    Configuration(
        "lexeme-head",
        "harmoclip + region and lexeme heads of their own",
        {**HARMOCLIP_FIELDS, "region_heads": True},
    ),
    Configuration(
        "harmoclip-gd",
        "the `harmoclip-gd` recipe: harmoclip + global distillation (LwF)",
        {**HARMOCLIP_FIELDS, **recipe_fields("harmoclip-gd")},
    ),
    Configuration(
        "gentle-trunk",
        "harmoclip + the vision trunk at 0.1 x the learning rate",
        {**HARMOCLIP_FIELDS, "vision_trunk_lr_scale": 0.1},
    ),
    Configuration(
        "region-last-layer",
        "harmoclip + region terms reaching only the last vision layer",
        {**HARMOCLIP_FIELDS, "region_grad_reach": "last_layer"},
    ),
    Configuration(
        "head-only",
        "harmoclip + region terms training only heads of their own",
        {**HARMOCLIP_FIELDS, "region_heads": True, "region_grad_reach": "projection"},
    ),
    # WiSE-FT: no training of its own; the `harmoclip` row's weights mixed with the pre-trained ones, the mixing weight
    # chosen on the dev split (`runs.weight_ensemble_row`).
    Configuration("wise-ft", "harmoclip + WiSE-FT (alpha chosen on dev)", HARMOCLIP_FIELDS),
)
# The rows that are not trained: what they are made from, by key.
POST_HOC_ROWS = {"wise-ft": "harmoclip"}
# The candidates of the harmony rule (`statistics.harmony_rule`): the paper's terms as shipped, and each change to it.
HARMONY_CANDIDATES = (
    "harmoclip",
    "lexeme-head",
    "harmoclip-gd",
    "gentle-trunk",
    "region-last-layer",
    "head-only",
    "wise-ft",
)
# WiSE-FT's mixing weights tried on the dev split (1.0 is the fine-tuned `harmoclip` row itself).
WISE_ALPHAS = (0.25, 0.5, 0.75, 1.0)
CONFIGURATION_KEYS = tuple(configuration.key for configuration in FINETUNE_CONFIGURATIONS)
GOAL_ROW = "harmoclip"  # the row of TrainConfig's defaults, which the goal is about
REGION_REFERENCES = ("gc", "gr", "gc-gr")  # the rows a default must beat on held-out regions
# Fields a row may not set: they are the benchmark's (same data, same pre-trained model, same budget for every row).
BENCHMARK_FIELDS = (
    "data_format",
    "synthetic_dir",
    "synthetic_num_train",
    "synthetic_num_val",
    "synthetic_image_size",
    "synthetic_min_shapes",
    "synthetic_held_out",
    "synthetic_vocabulary",
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
    "eval_templates",
)


def recipe_row(name: str) -> Configuration:
    """The row of the named recipe (`RECIPES`): its fields, the rest the benchmark's base (`BASE_FIELDS`)."""
    return Configuration(f"recipe-{name}", f"the `{name}` recipe", {**recipe_fields(name), "recipe": name})


def parse_row(text: str) -> Configuration:
    """``"key:field=value,field=value"`` -> an extra row (an ablation); values are read as the field's type."""
    key, _, assignments = text.partition(":")
    if not key or not key.replace("-", "").replace("_", "").isalnum() or key in CONFIGURATION_KEYS + (PRETRAINED.key,):
        raise ValueError(f"--row {text!r}: the key must be a new name of letters, digits, '-' or '_', got {key!r}")
    fields: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        name, equals, value = assignment.partition("=")
        name = name.strip()
        if not equals or name in BENCHMARK_FIELDS:
            raise ValueError(
                f"--row {text!r}: {assignment!r} must be field=value with a field other than {list(BENCHMARK_FIELDS)}"
            )
        if name == "recipe":  # a named recipe: its fields, under those given beside it (in any order)
            fields = {**recipe_fields(value.strip()), **fields, "recipe": value.strip()}
            continue
        fields[name] = config_field_value(name, value.strip())
    if not fields:
        raise ValueError(f"--row {text!r}: give at least one field=value after the key")
    return Configuration(key, f"{key} ({', '.join(f'{name}={value}' for name, value in fields.items())})", fields)


@dataclass
class HarmonySettings:
    """Everything the benchmark's figures depend on. The defaults are the evidence run (5 seeds; docs/toy_clip.md says
    what each part costs on 2 CPU cores)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # ---- data: the synthetic shapes (training/data/synthetic.py)
    synthetic_num_train: int = 2000
    synthetic_num_val: int = 300
    synthetic_image_size: int = 64
    synthetic_min_shapes: int = 2
    synthetic_held_out: int = 4
    synthetic_vocabulary: str = "basic"  # "rich": 9 colours x 7 shapes (training/data/synthetic.py VOCABULARIES)
    # ---- model: a from-scratch preset of training/builders.py
    model_preset: str = "tiny"
    image_size: int = 64
    patch_size: int = 8
    # ---- pre-training: the toy CLIP recipe (a TrainConfig YAML); the options below, when given, override it
    pretrain_recipe: str = PRETRAIN_RECIPE
    pretrain_steps: int | None = None
    pretrain_batch_size: int | None = None
    pretrain_learning_rate: float | None = None
    pretrain_warmup_steps: int | None = None
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
    # Images of each seed's dev split (validation for choices, such as WiSE-FT's mixing weight; never reported).
    synthetic_num_dev: int = 150
    configurations: tuple[str, ...] = CONFIGURATION_KEYS
    rows: tuple[str, ...] = ()  # extra rows, "key:field=value,...": see `parse_row`
    recipes: tuple[str, ...] = ()  # named recipes (`RECIPES`) added as rows, keyed "recipe-NAME"

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
        self.recipes = tuple(self.recipes)
        unknown_recipes = [name for name in self.recipes if name not in RECIPES]
        if unknown_recipes or len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"`recipes` must be distinct names of {list(RECIPES)}, got {list(self.recipes)}")
        extra = [parse_row(row).key for row in self.rows]
        if len(set(extra)) != len(extra):
            raise ValueError(f"`rows` uses a key twice: {extra}")
        for key, made_from in POST_HOC_ROWS.items():
            if key in self.configurations and not {made_from, GC_ONLY.key} <= set(self.configurations):
                raise ValueError(
                    f"`configurations`: {key!r} is made from the {made_from!r} row and chosen against {GC_ONLY.key!r}: "
                    f"list both, got {list(self.configurations)}"
                )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct and at least one, got {list(self.seeds)}")
        for name in (
            "synthetic_num_train",
            "synthetic_num_val",
            "synthetic_num_dev",
            "pretrain_steps",
            "pretrain_batch_size",
            "finetune_steps",
            "finetune_batch_size",
            "eval_batch_size",
        ):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}")
        if self.synthetic_vocabulary not in VOCABULARIES:
            raise ValueError(
                f"`synthetic_vocabulary` must be one of {tuple(VOCABULARIES)}, got {self.synthetic_vocabulary!r}"
            )
        for name in ("pretrain_batch_size", "finetune_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) > self.synthetic_num_train:
                raise ValueError(
                    f"`{name}` ({getattr(self, name)}) exceeds `synthetic_num_train` ({self.synthetic_num_train})"
                )

    def finetune_configurations(self) -> list[Configuration]:
        return (
            [c for c in FINETUNE_CONFIGURATIONS if c.key in self.configurations]
            + [parse_row(row) for row in self.rows]
            + [recipe_row(name) for name in self.recipes]
        )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(
            configurations=list(self.configurations),
            rows=list(self.rows),
            recipes=list(self.recipes),
            seeds=list(self.seeds),
        )
        return values


# A smoke run of the whole pipeline in a few minutes (figures are meaningless at this size, and the report says so).
QUICK_SETTINGS: dict[str, Any] = dict(
    seeds=(0, 1),
    synthetic_num_train=8,
    synthetic_num_val=8,
    synthetic_num_dev=6,
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
