"""Turning a `TrainConfig` into the objects of a run: model and processor, data sets and collator, teacher cache."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import CLIPConfig, CLIPTokenizer

from conversion.clip_vocab import write_clip_tokenizer_files
from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor
from training.config import TrainConfig
from training.data.collate import RegionCollator
from training.data.data_hf import HFRegionDataset
from training.data.datasets import CocoRegionDataset, Flickr30kEntitiesDataset, JsonlRegionDataset, RegionDataset
from training.data.object_views import ObjectViewMix
from training.data.streaming import RegionStream
from training.data.synthetic import VOCABULARIES, SyntheticSettings, generate_synthetic_dataset
from training.teacher import build_teacher_cache as build_teacher_cache  # re-exported: its home is training/teacher.py
from training.teacher import crop_options, teacher_needs_crops
from training.teacher import teacher_cache_settings as teacher_cache_settings  # re-exported likewise

logger = logging.getLogger(__name__)

# Tower sizes of the from-scratch presets. "tiny" learns the synthetic shapes in a few CPU minutes; "micro" is for
# smoke runs of whole pipelines (tests, `python -m benchmarks.harmony --quick`), where only the plumbing matters.
PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        projection_dim=32,
    ),
    "tiny": dict(
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        projection_dim=128,
    ),
    "vit-b-16": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    ),
}


def harmoclip_settings(config: TrainConfig) -> dict[str, Any]:
    """The model-config fields the training config sets: the recipe (`RECIPE_FIELDS`) and its name (`recipe_name`)."""
    return config.recipe_settings


def build_tokenizer(config: TrainConfig, folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer from OpenAI's BPE file (`tokenizer_num_merges` of its merges; None: the full vocabulary)."""
    write_clip_tokenizer_files(config.tokenizer_bpe, folder, num_merges=config.tokenizer_num_merges)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def scratch_model_config(config: TrainConfig, vocab_size: int) -> HarmoCLIPConfig:
    preset = PRESETS[config.model_preset]
    clip_config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            **preset["text"],
        ),
        vision_config=dict(image_size=config.image_size, patch_size=config.patch_size, **preset["vision"]),
        projection_dim=preset["projection_dim"],
    )
    return HarmoCLIPConfig.from_clip_config(clip_config, **harmoclip_settings(config))


def enable_gradient_checkpointing(model: HarmoCLIPModel) -> None:
    """Gradient checkpointing on every layer of both towers (and the dense value path, see `dense_features.dense_from_trunk`):
    only each layer's input is kept in the forward pass, the rest is recomputed in the backward pass.

    Non-reentrant checkpointing: it gives gradients whether or not a layer's input requires them (locked layers,
    `lock_text`), and the same gradients as without checkpointing."""
    # transformers >= 5.x renamed gradient_checkpointing_enable (kept as a deprecated alias); both take the kwargs.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def build_model_and_processor(config: TrainConfig) -> tuple[HarmoCLIPModel, HarmoCLIPProcessor]:
    """From `init_from` (a HarmoCLIP or plain CLIP folder) or from scratch (a preset and OpenAI's BPE vocabulary);
    gradient checkpointing enabled when the config asks for it."""
    model, processor = _build_model_and_processor(config)
    start_region_temperature(model)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, processor


def start_region_temperature(model: HarmoCLIPModel) -> None:
    """Starts `region_logit_scale` as the config's `region_logit_scale_mode` says and records the value in the config.

    "separate": at `region_logit_scale_init_value`, also for a HarmoCLIP folder that saved another value;
    "from_global": where loading left it (a CLIP's trained `logit_scale`, or a HarmoCLIP folder's own scale). Either
    way the config's `region_logit_scale_init_value` then holds the value training starts from, so the saved model
    says so. "shared" uses `logit_scale` and leaves both alone."""
    mode = model.config.region_logit_scale_mode
    if mode == "separate":
        with torch.no_grad():
            model.region_logit_scale.fill_(float(model.config.region_logit_scale_init_value))
    if mode != "shared":
        model.config.region_logit_scale_init_value = float(model.region_logit_scale.detach())


def check_init_from(init_from: str) -> None:
    """Fails at once, in one line, for an `init_from` that is neither a model folder nor a Hub repository id, rather
    than after `from_pretrained`'s minutes of retries against the Hub."""
    path = Path(init_from).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"config `init_from` {init_from!r} is a file: give the model's folder")
        return
    try:
        validate_repo_id(init_from)
    except HFValidationError:
        raise ValueError(f"config `init_from` {init_from!r}: no such folder (and not a Hub repository id)") from None


def _build_model_and_processor(config: TrainConfig) -> tuple[HarmoCLIPModel, HarmoCLIPProcessor]:
    if config.init_from:
        check_init_from(config.init_from)
        # The settings go in before the weights load: a CLIP folder's missing `region_logit_scale` is then initialised
        # as this run's `region_logit_scale_mode` says (from the CLIP's trained `logit_scale`, or the config value).
        model = HarmoCLIPModel.from_pretrained(config.init_from, **harmoclip_settings(config))
        vision = model.config.vision_config
        if (vision.image_size, vision.patch_size) != (config.image_size, config.patch_size):
            raise ValueError(
                f"config `image_size`/`patch_size` ({config.image_size}/{config.patch_size}) differ from the model in "
                f"`init_from` {config.init_from!r} ({vision.image_size}/{vision.patch_size}): set them to the model's"
            )
        model.config._check_harmoclip_settings()
        processor = load_processor(config.init_from, region_mode=config.processor_region_mode)
        return model, processor
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_tokenizer(config, Path(folder))
    processor = HarmoCLIPProcessor(
        image_processor=clip_image_processor(config.image_size),
        tokenizer=tokenizer,
        region_mode=config.processor_region_mode,
    )
    return HarmoCLIPModel(scratch_model_config(config, len(tokenizer))), processor


def load_processor(folder: str | Path, region_mode: bool) -> HarmoCLIPProcessor:
    """A HarmoCLIP processor from a HarmoCLIP folder, or built from a plain CLIP folder's tokenizer and image settings."""
    try:
        # The class is imported here: the folder's own copy of the code is not needed (and asking would prompt).
        processor = HarmoCLIPProcessor.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as error:
        from transformers import AutoImageProcessor, AutoTokenizer

        logger.info(
            "no HarmoCLIP processor in %s (%s): building one from its tokenizer and image processor", folder, error
        )
        image_processor = AutoImageProcessor.from_pretrained(folder)
        return HarmoCLIPProcessor(
            image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder), region_mode=region_mode
        )
    if region_mode:  # a saved crop geometry can be switched to square, not back
        processor = processor.as_region_mode()
    return processor


def synthetic_settings(config: TrainConfig) -> SyntheticSettings:
    return SyntheticSettings(
        num_train=config.synthetic_num_train,
        num_val=config.synthetic_num_val,
        seed=config.seed,
        image_size=config.synthetic_image_size,
        colours=VOCABULARIES[config.synthetic_vocabulary][0],
        shapes=VOCABULARIES[config.synthetic_vocabulary][1],
        min_shapes=config.synthetic_min_shapes,
        held_out=config.synthetic_held_out,
    )


def build_dataset_for_split(config: TrainConfig, split: str) -> RegionDataset | RegionStream | None:
    """The training ("train") or held-out ("val") data set of the configured source (None: no such split); a streamed
    training source is a `RegionStream`."""
    common = dict(seed=config.seed, max_boxes=config.max_boxes, min_box_size=config.min_box_size, strict=config.strict)
    if config.data_format == "synthetic":
        return JsonlRegionDataset(Path(config.synthetic_dir) / f"{split}.jsonl", **common)
    source = config.train_data if split == "train" else config.val_data
    if source is None:
        return None
    if config.data_format == "jsonl":
        return JsonlRegionDataset(source, image_root=config.image_root, **common)
    if config.data_format == "hf":
        if config.streaming and split == "train":
            return RegionStream.open(source, columns=config.hf_columns, image_root=config.image_root, **common)
        return HFRegionDataset(source, columns=config.hf_columns, image_root=config.image_root, **common)
    if config.data_format == "coco":
        captions = Path(source)
        instances = (
            Path(config.coco_instances)
            if config.coco_instances and split == "train"
            else captions.with_name(captions.name.replace("captions_", "instances_"))
        )
        image_root = config.image_root if split == "train" else (config.val_image_root or config.image_root)
        if image_root is None:
            raise ValueError("config `image_root` (the COCO image folder) is required with data_format='coco'")
        return CocoRegionDataset(
            captions, instances, image_root, phrase_cache=captions.with_suffix(".phrases.npz"), **common
        )
    return Flickr30kEntitiesDataset(
        source,
        split_file=Path(source) / f"{split}.txt" if (Path(source) / f"{split}.txt").is_file() else None,
        image_dir=config.image_root,
        category=config.flickr_category,
        **common,
    )


def build_datasets(
    config: TrainConfig,
    processor: HarmoCLIPProcessor,
    main_process_first: Callable[[], AbstractContextManager] | None = None,
) -> tuple[RegionDataset | RegionStream, RegionDataset | None, RegionCollator]:
    """Train and held-out sets plus the collator. The main process goes first: it alone generates the synthetic set
    or converts Parquet / tar files into `datasets`' Arrow cache; the others then find them."""
    with main_process_first() if main_process_first else contextlib.nullcontext():
        if config.data_format == "synthetic":
            generate_synthetic_dataset(config.synthetic_dir, synthetic_settings(config))
        train_set, val_set = build_dataset_for_split(config, "train"), build_dataset_for_split(config, "val")
    if config.object_views > 0:
        train_set = ObjectViewMix(train_set, config.object_views, config.object_view_scale, seed=config.seed)
    return train_set, val_set, region_collator(config, processor)


def region_collator(
    config: TrainConfig, processor: HarmoCLIPProcessor, with_crops: bool | None = None
) -> RegionCollator:
    """The training collator; with the teacher's crops of the original images (`crop_pixel_values`, `crop_mask`, cut
    in the DataLoader's workers at `gr_crop_scale`) when the teacher needs them, or when `with_crops` says so."""
    if with_crops is None:
        with_crops = teacher_needs_crops(config)
    if not with_crops:
        return RegionCollator(processor)
    return RegionCollator(processor, **crop_options(config))


def move_batch(batch: Any, device: torch.device) -> dict[str, Any]:
    """Tensors to `device`; lists (image ids) stay."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in dict(batch).items()}


def evaluation_sources(config: TrainConfig) -> dict[str, str]:
    """Task -> data file for the end-of-training evaluation: the configured files, else the held-out JSONL manifest."""
    held_out = None
    if config.data_format == "synthetic":
        held_out = str(Path(config.synthetic_dir) / "val.jsonl")
    elif config.data_format == "jsonl" and config.val_data:
        held_out = config.val_data
    sources = {"retrieval": config.eval_retrieval_data or held_out, "boxcls": config.eval_boxcls_data or held_out}
    return {task: path for task, path in sources.items() if path}


def evaluate_model(
    model: HarmoCLIPModel,
    processor: HarmoCLIPProcessor,
    config: TrainConfig,
    output_dir: Path,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Retrieval and box classification of `model` on the held-out data; writes `eval.json` + `eval.md`.

    Returns {task: results}, the figures of each task (recall in %, accuracies in %).
    """
    import json

    from evaluation.evaluate import markdown_report, run_evaluation
    from plumbing.atomic_files import write_text_atomic

    reports = {}
    for task, path in evaluation_sources(config).items():
        reports[task] = run_evaluation(
            model,
            processor,
            task,
            path,
            image_root=config.eval_image_root,
            split=None,
            batch_size=config.eval_batch_size,
            num_workers=config.num_workers,
            model_name=str(Path(config.output_dir) / "model"),
            command="training/train.py (end of training)",
            show_progress=show_progress,
            **({"templates": list(config.eval_templates)} if config.eval_templates else {}),
        )
    if reports:
        write_text_atomic(output_dir / "eval.json", json.dumps({"tasks": reports}, indent=2) + "\n")
        write_text_atomic(output_dir / "eval.md", "\n".join(markdown_report(report) for report in reports.values()))
    return {task: report["results"] for task, report in reports.items()}
